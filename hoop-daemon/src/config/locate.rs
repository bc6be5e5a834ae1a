//! Finds where a key path (`connection[1].hosts[0]`) sits in the user's
//! TOML text, so that semantic errors point at a line and column too.
use toml::de::{DeTable, DeValue};

/// 1-based (line, column) of the value at `path` in `text`, if present.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let root = DeTable::parse(text).ok()?;
    let mut span = root.span();
    let mut cur: Option<&DeValue<'_>> = None;
    let mut table = Some(root.get_ref());
    for seg in segments(path) {
        match seg {
            Seg::Key(k) => {
                let t = match cur {
                    None => table?,
                    Some(DeValue::Table(t)) => t,
                    Some(_) => return None,
                };
                let (_, v) = t.iter().find(|(key, _)| key.get_ref().as_ref() == k)?;
                span = v.span();
                cur = Some(v.get_ref());
                table = None;
            }
            Seg::Index(i) => {
                let Some(DeValue::Array(a)) = cur else {
                    return None;
                };
                let v = a.get(i)?;
                span = v.span();
                cur = Some(v.get_ref());
            }
        }
    }
    Some(line_col(text, span.start))
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> impl Iterator<Item = Seg<'_>> {
    path.split('.').flat_map(|part| {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        std::iter::once(Seg::Key(key)).chain(
            rest.split('[')
                .filter_map(|i| i.trim_end_matches(']').parse().ok())
                .map(Seg::Index),
        )
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::locate;

    #[test]
    fn finds_nested_keys_and_array_items() {
        let t = "[capture]\nlisten_port = 1\n\n[[connection]]\nname = \"a\"\nhosts = [\"x\", \"*.y\"]\n";
        assert_eq!(locate(t, "capture.listen_port"), Some((2, 15)));
        assert_eq!(locate(t, "connection[0].name"), Some((5, 8)));
        assert_eq!(locate(t, "connection[0].hosts[1]"), Some((6, 15)));
        assert_eq!(locate(t, "connection[1].name"), None);
        assert_eq!(locate(t, "nope"), None);
    }
}
