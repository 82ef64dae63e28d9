//! Finds the line of a field path such as `backends[1].url` in block-style YAML, so that
//! semantic problems (found after serde is done) can still point at a line. Best effort:
//! inside flow-style values (`{ … }`, `[ … ]`) it answers the line where the value starts.

/// One step of a field path.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(n) = idx.trim_end_matches(']').parse() {
                out.push(Step::Index(n));
            }
        }
    }
    out
}

/// Column of the first meaningful character, or None for blank and comment lines.
fn content_col(line: &str) -> Option<usize> {
    let col = line.len() - line.trim_start().len();
    let rest = &line[col..];
    (!rest.is_empty() && !rest.starts_with('#')).then_some(col)
}

/// A YAML node: its text begins on `line` at `col` and its block ends before `end`.
#[derive(Clone, Copy)]
struct Node {
    line: usize,
    col: usize,
    end: usize,
}

/// 1-based line of `path` in `yaml`, if it can be found.
pub fn line_of(yaml: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = yaml.lines().collect();
    let block_end = |from: usize, col: usize, allow_dash_at_col: bool| {
        (from..lines.len())
            .find(|&j| match content_col(lines[j]) {
                Some(c) => c < col || (c == col && !(allow_dash_at_col && lines[j][c..].starts_with('-'))),
                None => false,
            })
            .unwrap_or(lines.len())
    };
    let mut node = Node { line: 0, col: 0, end: lines.len() };
    let mut found = None;
    for step in steps(path) {
        // The node's own lines with their content columns; the first may start mid-line.
        let mut children = Vec::new();
        for (i, line) in lines.iter().enumerate().take(node.end).skip(node.line) {
            let col = if i == node.line {
                let text = line.get(node.col..).unwrap_or("");
                match content_col(text) {
                    Some(c) => node.col + c,
                    None => continue,
                }
            } else {
                match content_col(line) {
                    Some(c) => c,
                    None => continue,
                }
            };
            children.push((i, col));
        }
        let &(_, child_col) = children.first()?;
        let text_at = |(i, c): (usize, usize)| &lines[i][c..];
        if let Some(l) = found {
            let first = text_at(children[0]);
            if first.starts_with('{') || first.starts_with('[') {
                return Some(l); // flow style: the value's line is as precise as it gets
            }
        }
        let siblings = children.iter().copied().filter(|&(_, c)| c == child_col);
        match step {
            Step::Key(key) => {
                let (i, c) = siblings.into_iter().find(|&ic| {
                    let t = text_at(ic);
                    t.strip_prefix(key).is_some_and(|r| r.starts_with(':'))
                        || t.strip_prefix('"').and_then(|t| t.strip_prefix(key)).is_some_and(|r| r.starts_with("\":"))
                })?;
                found = Some(i + 1);
                let after = c + lines[i][c..].find(':')? + 1;
                let inline = content_col(lines[i].get(after..).unwrap_or("")).is_some();
                node = if inline {
                    Node { line: i, col: after, end: i + 1 }
                } else {
                    Node { line: i + 1, col: 0, end: block_end(i + 1, c, true) }
                };
            }
            Step::Index(n) => {
                let (i, c) = siblings.filter(|&ic| text_at(ic).starts_with('-')).nth(n)?;
                found = Some(i + 1);
                node = Node { line: i, col: c + 1, end: block_end(i + 1, c + 1, false) };
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const YAML: &str = "\
listen:
  proxy: 127.0.0.1:1880   # comment
  admin: 127.0.0.1:9901
backends:
  - id: a
    url: http://127.0.0.1:1
  # a comment between items
  - id: b
    url: http://127.0.0.1:2
    token:
      env: TOKEN_B
  - { id: c, url: \"http://x\" }
health:
  interval: 1s
";

    #[test]
    fn finds_block_style_paths() {
        let cases = [
            ("listen", 1),
            ("listen.admin", 3),
            ("backends", 4),
            ("backends[0]", 5),
            ("backends[0].id", 5),
            ("backends[0].url", 6),
            ("backends[1].url", 9),
            ("backends[1].token.env", 11),
            ("backends[2].url", 12),
            ("health.interval", 14),
        ];
        for (path, line) in cases {
            assert_eq!(line_of(YAML, path), Some(line), "{path}");
        }
    }

    #[test]
    fn unknown_paths_have_no_line() {
        assert_eq!(line_of(YAML, "backends[3].id"), None);
        assert_eq!(line_of(YAML, "failover.hold"), None);
        assert_eq!(line_of(YAML, "listen.nope"), None);
    }

    #[test]
    fn sequences_at_the_key_indentation_are_found() {
        let y = "backends:\n- id: a\n- id: b\n  url: u\nhealth: {}\n";
        assert_eq!(line_of(y, "backends[1].url"), Some(4));
        assert_eq!(line_of(y, "health"), Some(5));
    }
}
