//! Reading routes.toml into [`FileConfig`] so that one typo does not hide
//! every other problem.
//!
//! serde's `deny_unknown_fields` stops at the first unknown key. Instead of
//! giving that up (the structs keep it, so the key sets are written once, in
//! the structs), the document is parsed once into toml's spanned tree and
//! deserialized from it; each time serde names an unknown key, that key is
//! recorded with its line and the nearest known one, taken out of the tree,
//! and deserialization runs again. A file with n unknown keys costs n + 1
//! passes over a few kilobytes, once per load. A value of the wrong type is
//! recorded and taken out the same way, so several of those are reported
//! too; a config is built only when nothing but unknown keys was wrong, and
//! then the later checks (descriptors, routes, policies) add their errors to
//! the same list.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{ConfigError, FileConfig, LineIndex};

/// The outcome of parsing: the config when it could be built (unknown keys
/// aside), and every problem found on the way.
pub(super) struct Parsed {
    pub config: Option<FileConfig>,
    pub errors: Vec<ConfigError>,
}

pub(super) fn parse(path: &Path, text: &str, lines: &LineIndex) -> Parsed {
    let mut parsed = match DeTable::parse(text) {
        Ok(doc) => Pass {
            path,
            lines,
            errors: Vec::new(),
            removed_values: Vec::new(),
        }
        .run(doc),
        Err(e) => {
            let line = e.span().map(|s| lines.line(s.start));
            Parsed {
                config: None,
                errors: vec![ConfigError::new(path, line, "", e.message().trim())],
            }
        }
    };
    // Found in the order serde reads keys, reported in the file's.
    parsed.errors.sort_by_key(|e| e.line);
    parsed
}

/// The state of the passes over one document.
struct Pass<'a> {
    path: &'a Path,
    lines: &'a LineIndex,
    errors: Vec<ConfigError>,
    /// Keys taken out because their value was wrong: a "missing field"
    /// naming one of them is our doing, not the operator's.
    removed_values: Vec<String>,
}

/// What one failed pass leads to.
enum Next {
    Again,
    Stop,
}

impl Pass<'_> {
    fn run(mut self, mut doc: Spanned<DeTable<'_>>) -> Parsed {
        // Each pass that goes on takes one entry out of `doc`, so this ends.
        loop {
            match FileConfig::deserialize(toml::de::Deserializer::from(doc.clone())) {
                Ok(config) => {
                    return Parsed {
                        config: self.removed_values.is_empty().then_some(config),
                        errors: self.errors,
                    }
                }
                Err(e) => {
                    if let Next::Stop = self.record(&e, doc.get_mut()) {
                        return Parsed {
                            config: None,
                            errors: self.errors,
                        };
                    }
                }
            }
        }
    }

    /// Records one serde error and takes its entry out of `doc` when it can.
    fn record(&mut self, err: &toml::de::Error, doc: &mut DeTable<'_>) -> Next {
        let message = err.message().trim();
        let span = err.span();
        let line = span.as_ref().map(|s| self.lines.line(s.start));
        if let Some((key, known)) = unknown_field(message) {
            if let Some(found) = span.as_ref().and_then(|s| take(doc, s, Side::Key, "")) {
                let message = format!("unknown key \"{key}\"{}", suggestion(&key, &known));
                self.errors
                    .push(ConfigError::new(self.path, line, found.path, message));
                return Next::Again;
            }
        }
        if missing_field(message).is_some_and(|m| self.removed_values.contains(&m)) {
            return Next::Stop;
        }
        let mut message = message.to_owned();
        if let Some((value, known)) = unknown_variant(&message) {
            message.push_str(&suggestion(&value, &known));
        }
        match span.as_ref().and_then(|s| take(doc, s, Side::Value, "")) {
            Some(found) => {
                self.errors
                    .push(ConfigError::new(self.path, line, found.path, message));
                self.removed_values.push(found.key);
                Next::Again
            }
            None => {
                self.errors
                    .push(ConfigError::new(self.path, line, "", message));
                Next::Stop
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Key,
    Value,
}

/// An entry taken out of the tree: its key path (`routes[2].timeout`) and key.
struct Taken {
    path: String,
    key: String,
}

/// Finds the entry whose key (or value, or an element of its array value)
/// sits exactly at `span`, takes it out of the tree and names it. Elements of
/// arrays of tables are searched, never taken out: that would shift the
/// index of every later `[[routes]]` in the messages that follow.
fn take(table: &mut DeTable<'_>, span: &Range<usize>, side: Side, prefix: &str) -> Option<Taken> {
    let mut hit = None;
    for (k, v) in table.iter_mut() {
        let path = join(prefix, k.get_ref());
        let here = match side {
            Side::Key => k.span() == *span,
            Side::Value => v.span() == *span || scalar_element_at(v, span),
        };
        if here {
            hit = Some((k.clone(), path));
            break;
        }
        if let Some(found) = take_within(v, span, side, &path) {
            return Some(found);
        }
    }
    let (key, path) = hit?;
    // Keys compare by name, whatever their span.
    table.remove(&key);
    Some(Taken {
        path,
        key: key.into_inner().into_owned(),
    })
}

fn take_within(
    v: &mut Spanned<DeValue<'_>>,
    span: &Range<usize>,
    side: Side,
    path: &str,
) -> Option<Taken> {
    match v.get_mut() {
        DeValue::Table(t) => take(t, span, side, path),
        DeValue::Array(items) => items.iter_mut().enumerate().find_map(|(i, item)| {
            let path = format!("{path}[{i}]");
            match item.get_mut() {
                DeValue::Table(t) => take(t, span, side, &path),
                _ => None,
            }
        }),
        _ => None,
    }
}

/// A wrong value inside a list of scalars (`forward_headers = ["a", 5]`)
/// takes the whole list out.
fn scalar_element_at(v: &Spanned<DeValue<'_>>, span: &Range<usize>) -> bool {
    match v.get_ref() {
        DeValue::Array(items) => items
            .iter()
            .any(|i| !i.get_ref().is_table() && (i.span() == *span || scalar_element_at(i, span))),
        _ => false,
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (its wording has
/// been stable since serde 1.0): the key and the known ones.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    named_with_expected(message, "unknown field `")
}

/// serde's "unknown variant `x`, expected one of `a`, `b`".
fn unknown_variant(message: &str) -> Option<(String, Vec<String>)> {
    named_with_expected(message, "unknown variant `")
}

fn named_with_expected(message: &str, lead: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix(lead)?;
    let (name, rest) = rest.split_once('`')?;
    // The list follows "expected"; "there are no fields" has none.
    let known = rest
        .split_once("expected")
        .map(|(_, list)| {
            list.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Some((name.to_owned(), known))
}

/// serde's "missing field `x`".
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split_once('`').map(|(name, _)| name.to_owned())
}

/// `; did you mean "timeout"?` when one known name is close enough to be
/// the intended one, and nothing otherwise: a far-fetched guess misleads.
fn suggestion(typed: &str, known: &[String]) -> String {
    known
        .iter()
        .map(|k| (edit_distance(typed, k), k))
        .filter(|(d, k)| *d <= k.chars().count().max(3) / 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| format!("; did you mean \"{k}\"?"))
        .unwrap_or_default()
}

/// Edit distance over chars with adjacent swaps counted as one edit (the
/// commonest typo: `wtach`), ASCII case folded (`Timeout` is a typo of
/// `timeout` at distance 0 here, and serde still reports it as unknown).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> Vec<String> {
        let p = parse(Path::new("r.toml"), src, &LineIndex::new(src));
        p.errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_line_and_nearest_known_key() {
        let src = "[server]\nlisen = \"x\"\n\n[[routes]]\nmethod = \"GET\"\npath = \"/a\"\n\
                   grpc = \"a.B/C\"\ntimout = \"1s\"\n\n[telemetry]\nzzz = 1\n";
        let p = parse(Path::new("r.toml"), src, &LineIndex::new(src));
        assert!(p.config.is_some(), "unknown keys aside, the config builds");
        let e: Vec<String> = p.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            e,
            [
                "r.toml:2: server.lisen: unknown key \"lisen\"; did you mean \"listen\"?",
                "r.toml:8: routes[0].timout: unknown key \"timout\"; did you mean \"timeout\"?",
                "r.toml:11: telemetry.zzz: unknown key \"zzz\"",
            ]
        );
    }

    #[test]
    fn wrong_types_are_all_reported_and_no_config_is_built() {
        let src = "[server]\nmax_body_bytes = \"big\"\nwatch = 3\nwtach = false\n";
        let p = parse(Path::new("r.toml"), src, &LineIndex::new(src));
        assert!(p.config.is_none());
        let e: Vec<String> = p.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("r.toml:2: server.max_body_bytes: invalid type"));
        assert!(e[1].starts_with("r.toml:3: server.watch: invalid type"));
        assert!(e[2].contains("did you mean \"watch\"?"), "{e:?}");
    }

    #[test]
    fn a_required_field_of_the_wrong_type_stops_without_a_made_up_missing_field() {
        let e = errors("[[routes]]\nmethod = 5\npath = \"/a\"\ngrpc = \"a.B/C\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("r.toml:2: routes[0].method: invalid type"));
    }

    #[test]
    fn unknown_enum_values_get_a_suggestion() {
        let e = errors("[telemetry]\nlog_format = \"jsno\"\n");
        assert!(e[0].starts_with("r.toml:2: telemetry.log_format: unknown variant"));
        assert!(e[0].ends_with("did you mean \"json\"?"), "{e:?}");
    }

    #[test]
    fn a_scalar_list_with_a_wrong_element_is_reported_by_its_key() {
        let e = errors("[server]\nforward_headers = [\"a\", 5]\n");
        assert!(
            e[0].starts_with("r.toml:2: server.forward_headers: invalid type"),
            "{e:?}"
        );
    }

    #[test]
    fn distance_and_closeness() {
        assert_eq!(edit_distance("timout", "timeout"), 1);
        assert_eq!(edit_distance("Timeout", "timeout"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("wtach", "watch"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let known = ["timeout".to_owned(), "body".to_owned()];
        assert_eq!(suggestion("timout", &known), "; did you mean \"timeout\"?");
        assert_eq!(suggestion("bdy", &known), "; did you mean \"body\"?");
        assert_eq!(suggestion("colour", &known), "");
    }
}
