//! A web link for an endpoint's `code_url_version` (SPEC §6), e.g.
//! `git@host:team/echo.git@1a2b3c4` → `https://host/team/echo/commit/1a2b3c4`.
//!
//! Accepted repository forms: `git@host:path`, `ssh://[user@]host[:port]/path`,
//! `git://host/path`, `http(s)://host/path` and `host/path`, each optionally
//! ending in `.git`; the revision follows the last `@` (or `#`). A hex
//! revision of 7 to 40 digits links to its commit, any other revision (a
//! tag, a branch) to its tree, none to the repository. A plain http(s) URL
//! without a revision is linked as it is. Only http(s) links are ever made.

/// The link, or `None` when the text names no repository.
pub fn link(code_url_version: &str) -> Option<String> {
    let text = code_url_version.trim();
    if text.is_empty() || text.contains(char::is_whitespace) || text.contains(['"', '<', '>']) {
        return None;
    }
    let (repo, rev) = split_revision(text);
    let Some(base) = repository(repo) else {
        // A bare URL (a commit page already, say) is its own link.
        return (rev.is_none() && is_web_url(text)).then(|| text.to_string());
    };
    Some(match rev {
        None => base,
        Some(rev) => {
            let gitlab = base.contains("gitlab");
            let kind = if is_commit(rev) { "commit" } else { "tree" };
            let sep = if gitlab { "/-/" } else { "/" };
            format!("{base}{sep}{kind}/{rev}")
        }
    })
}

/// `repo@rev` or `repo#rev` → (repo, rev); the `@` of `git@host:` and of
/// `ssh://user@host` belongs to the repository.
fn split_revision(text: &str) -> (&str, Option<&str>) {
    if let Some((repo, rev)) = text.rsplit_once('#') {
        if is_revision(rev) {
            return (repo, Some(rev));
        }
    }
    match text.rsplit_once('@') {
        Some((repo, rev)) if is_revision(rev) && repo.contains(['/', ':']) => (repo, Some(rev)),
        _ => (text, None),
    }
}

/// A tag, branch or commit name: no `:` (that would be `git@host:path`).
fn is_revision(rev: &str) -> bool {
    !rev.is_empty()
        && rev
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '+'))
        && !rev.starts_with(['/', '.', '-'])
        && !rev.contains("..")
}

fn is_commit(rev: &str) -> bool {
    (7..=40).contains(&rev.len()) && rev.chars().all(|c| c.is_ascii_hexdigit())
}

fn is_web_url(text: &str) -> bool {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    rest.is_some_and(|r| r.split('/').next().is_some_and(is_host))
}

/// The repository's web page (`https://host/path`, no `.git`), if `repo`
/// names one.
fn repository(repo: &str) -> Option<String> {
    let (scheme, host, path) = if let Some(rest) = repo.strip_prefix("git@") {
        let (host, path) = rest.split_once(':')?;
        ("https", host, path)
    } else if let Some((scheme, rest)) = repo.split_once("://") {
        let scheme = match scheme {
            "http" => "http",
            "https" | "ssh" | "git" | "git+ssh" => "https",
            _ => return None,
        };
        let (authority, path) = rest.split_once('/')?;
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        // An ssh port is not the web server's.
        let host = if scheme == "https" && !repo.starts_with("https") {
            host.split_once(':').map_or(host, |(h, _)| h)
        } else {
            host
        };
        (scheme, host, path)
    } else {
        let (host, path) = repo.split_once('/')?;
        // `host/path` needs a dotted host name, or it is just a path.
        if !host.contains('.') {
            return None;
        }
        ("https", host, path)
    };
    let path = path.trim_matches('/');
    let path = path
        .strip_suffix(".git")
        .unwrap_or(path)
        .trim_end_matches('/');
    let path_ok = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '~'))
        && !path.contains("..");
    (is_host(host) && path_ok).then(|| format!("{scheme}://{host}/{path}"))
}

/// `name.example[:port]`: letters, digits, dots and dashes, an optional
/// port.
fn is_host(host: &str) -> bool {
    let (name, port) = host.split_once(':').unwrap_or((host, ""));
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && port.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::link;

    #[test]
    fn spec_example_links_to_its_commit() {
        assert_eq!(
            link("git@host:team/echo.git@1a2b3c4").as_deref(),
            Some("https://host/team/echo/commit/1a2b3c4")
        );
    }

    #[test]
    fn every_repository_form() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        for (text, want) in [
            (
                format!("git@github.com:team/echo.git@{sha}"),
                format!("https://github.com/team/echo/commit/{sha}"),
            ),
            (
                "https://github.com/team/echo.git@1a2b3c4".into(),
                "https://github.com/team/echo/commit/1a2b3c4".into(),
            ),
            (
                "github.com/team/echo@1a2b3c4".into(),
                "https://github.com/team/echo/commit/1a2b3c4".into(),
            ),
            (
                "ssh://git@git.example.com:2222/team/echo.git@1a2b3c4".into(),
                "https://git.example.com/team/echo/commit/1a2b3c4".into(),
            ),
            (
                "git://git.example.com/echo#1a2b3c4".into(),
                "https://git.example.com/echo/commit/1a2b3c4".into(),
            ),
            (
                "http://git.internal:3000/team/echo@1a2b3c4".into(),
                "http://git.internal:3000/team/echo/commit/1a2b3c4".into(),
            ),
            (
                "git@gitlab.example.com:group/sub/echo.git@1a2b3c4".into(),
                "https://gitlab.example.com/group/sub/echo/-/commit/1a2b3c4".into(),
            ),
        ] {
            assert_eq!(link(&text), Some(want), "{text}");
        }
    }

    #[test]
    fn tags_link_to_their_tree_and_no_revision_to_the_repository() {
        assert_eq!(
            link("git@github.com:team/echo.git@v1.4.2").as_deref(),
            Some("https://github.com/team/echo/tree/v1.4.2")
        );
        assert_eq!(
            link("git@github.com:team/echo.git").as_deref(),
            Some("https://github.com/team/echo")
        );
        assert_eq!(
            link("https://ci.example.com/builds/42").as_deref(),
            Some("https://ci.example.com/builds/42")
        );
    }

    #[test]
    fn nothing_that_is_not_a_repository_or_web_url() {
        for text in [
            "",
            "1a2b3c4",
            "v1.2.3",
            "/srv/echo@1a2b3c4",
            "echo@1a2b3c4",
            "javascript:alert(1)",
            "file:///etc/passwd",
            "https://host/x y@1a2b3c4",
            "git@host:team/echo.git@1a2b\"><script>",
            "https://host/../x@1a2b3c4",
        ] {
            assert_eq!(link(text), None, "{text:?}");
        }
    }
}
