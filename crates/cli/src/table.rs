//! Aligned plain-text columns: every column as wide as its widest cell,
//! two spaces between columns, no trailing blanks.

pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing trailing cells are left blank, and an empty
    /// cell is shown as `-` so columns stay readable.
    pub fn row(&mut self, cells: Vec<String>) {
        let cells = cells
            .into_iter()
            .map(|c| if c.is_empty() { "-".into() } else { c })
            .collect();
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let mut widths = vec![0; self.header.len()];
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line.iter()) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                // Padding counts characters, like the widths.
                text.push_str(&format!("{cell:<0$}", widths[i]));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_lines_end_without_blanks() {
        let mut t = Table::new(&["NAME", "ADDRESS", "NOTE"]);
        t.row(vec!["echo".into(), "127.0.0.1:5555".into(), String::new()]);
        t.row(vec![
            "a_longer_name".into(),
            "/run/é.sock".into(),
            "ok".into(),
        ]);
        t.row(vec!["short".into()]);
        assert_eq!(
            t.render(),
            "NAME           ADDRESS         NOTE\n\
             echo           127.0.0.1:5555  -\n\
             a_longer_name  /run/é.sock     ok\n\
             short\n"
        );
    }
}
