//! The few lines of a Prometheus / OpenMetrics text exposition the
//! dashboard needs: `name{label="value",...} number`, comments skipped.

/// One line of the exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Line {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample line of `text`; lines that cannot be read are skipped.
pub fn parse(text: &str) -> Vec<Line> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Line> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Line {
        name,
        labels,
        value,
    })
}

/// `k="v",k2="v2"}` → the pairs and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
}

/// The `le` buckets of histogram `name` (its `name_bucket` lines) among
/// `lines` that `keep` accepts, ascending, as `(bound, cumulative count)`;
/// series that differ in other labels are added up bucket by bucket.
pub fn buckets(
    lines: &[Line],
    name: &str,
    keep: impl Fn(&Line) -> bool,
) -> Option<Vec<(f64, u64)>> {
    let bucket = format!("{name}_bucket");
    let mut all: Vec<(f64, u64)> = lines
        .iter()
        .filter(|l| l.name == bucket && keep(l))
        .filter_map(|l| Some((bound(l.label("le")?)?, l.value as u64)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, u64)> = Vec::with_capacity(all.len());
    for (le, n) in all {
        match out.last_mut() {
            Some(last) if last.0 == le => last.1 += n,
            _ => out.push((le, n)),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A bucket's upper bound; the largest float counts as `+Inf` (some
/// encoders write the overflow bucket's bound that way).
fn bound(le: &str) -> Option<f64> {
    let v: f64 = match le {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    Some(if v >= f64::MAX { f64::INFINITY } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP rpc_lb_requests Requests from proxies, by how they ended.
# TYPE rpc_lb_requests counter
rpc_lb_requests_total{outcome="ok"} 120
rpc_lb_requests_total{outcome="exception"} 3
# TYPE rpc_lb_request_duration_seconds histogram
rpc_lb_request_duration_seconds_sum 0.5
rpc_lb_request_duration_seconds_count 123
rpc_lb_request_duration_seconds_bucket{le="0.001"} 100
rpc_lb_request_duration_seconds_bucket{le="+Inf"} 123
rpc_lb_request_duration_seconds_bucket{le="0.0001"} 7
odd{path="a \"quoted\", \\ and\nline",x="1"} 2.5 1700000000
broken{le=} 1
# EOF
"#;

    #[test]
    fn reads_samples_labels_and_escapes() {
        let lines = parse(TEXT);
        assert_eq!(lines[0].name, "rpc_lb_requests_total");
        assert_eq!(lines[0].label("outcome"), Some("ok"));
        assert_eq!(lines[0].value, 120.0);
        assert_eq!(lines[2].labels, vec![]);
        let odd = lines.iter().find(|l| l.name == "odd").unwrap();
        assert_eq!(odd.label("path"), Some("a \"quoted\", \\ and\nline"));
        assert_eq!(odd.label("x"), Some("1"));
        assert_eq!(odd.value, 2.5);
        assert!(lines.iter().all(|l| l.name != "broken"));
    }

    #[test]
    fn histogram_buckets_come_sorted_with_inf_last() {
        let lines = parse(TEXT);
        let b = buckets(&lines, "rpc_lb_request_duration_seconds", |_| true).unwrap();
        assert_eq!(b, vec![(0.0001, 7), (0.001, 100), (f64::INFINITY, 123)]);
        assert_eq!(buckets(&lines, "nothing", |_| true), None);
    }

    #[test]
    fn histograms_of_several_series_add_up() {
        let lines = parse(
            "h_bucket{le=\"0.5\",method=\"a\"} 1\n\
             h_bucket{le=\"1.7976931348623157e308\",method=\"a\"} 3\n\
             h_bucket{le=\"0.5\",method=\"b\"} 4\n\
             h_bucket{le=\"+Inf\",method=\"b\"} 4\n\
             h_bucket{le=\"0.5\",method=\"c\"} 100\n",
        );
        let b = buckets(&lines, "h", |l| l.label("method") != Some("c"));
        assert_eq!(b, Some(vec![(0.5, 5), (f64::INFINITY, 7)]));
    }
}
