//! A parsed TOML file that remembers where each key stands, so that problems found after parsing
//! (unknown keys, bad values, semantic checks) can name the line.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::problem::{display_path, Problem};

/// One segment of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A dotted key path such as `env.production.builder.instance_type` or `steps[2].timeout`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }
    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    pub fn parse(dotted: &str) -> Self {
        let mut p = KeyPath::root();
        for part in dotted.split('.').filter(|s| !s.is_empty()) {
            p = p.key(part);
        }
        p
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for s in &self.0 {
            match s {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        // Quoted as TOML writes it, control characters escaped: one line.
                        write!(f, "\"{}\"", k.escape_default())?;
                    }
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// A TOML file: its text, its value, and a span-keeping document for line lookups.
pub struct TomlFile {
    /// Path for messages (relative to the project root).
    pub shown: PathBuf,
    pub table: toml::Table,
    doc: toml_edit::ImDocument<String>,
}

impl TomlFile {
    /// Reads and parses `path`. A read or syntax error is one problem naming file and line.
    pub fn load(root: &Path, path: &Path) -> Result<TomlFile, Problem> {
        let shown = display_path(root, path);
        let text = std::fs::read_to_string(path).map_err(|e| Problem::new(&shown, "", format!("cannot read the file: {e}")))?;
        Self::parse(shown, text)
    }

    pub fn parse(shown: PathBuf, text: String) -> Result<TomlFile, Problem> {
        let doc = match toml_edit::ImDocument::parse(text.clone()) {
            Ok(d) => d,
            Err(e) => {
                let line = e.span().map(|s| line_of(&text, s.start));
                return Err(Problem::new(&shown, "", format!("not valid TOML: {}", e.message())).at_line(line));
            }
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| line_of(&text, s.start));
            Problem::new(&shown, "", format!("not valid TOML: {}", e.message())).at_line(line)
        })?;
        Ok(TomlFile { shown, table, doc })
    }

    /// The 1-based line where `path` is written, or where its nearest written parent is.
    pub fn line(&self, path: &KeyPath) -> Option<usize> {
        line_rec(self.doc.raw(), Node::Item(self.doc.as_item()), &path.0, None)
    }

    /// A problem at `path` in this file, with its line.
    pub fn problem(&self, path: &KeyPath, message: impl Into<String>) -> Problem {
        Problem::new(&self.shown, path.to_string(), message).at_line(self.line(path))
    }

    /// Deserializes `value` (found at `at` in this file) into `T`; an error names the exact key.
    pub fn typed<T: DeserializeOwned>(&self, at: &KeyPath, value: toml::Value) -> Result<T, Problem> {
        serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
            let mut path = at.clone();
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Map { key } => path = path.key(key),
                    serde_path_to_error::Segment::Seq { index } => path = path.index(*index),
                    serde_path_to_error::Segment::Enum { variant } => path = path.key(variant),
                    serde_path_to_error::Segment::Unknown => {}
                }
            }
            let msg = e.inner().message().to_string();
            // serde names an unknown field only in its message; add it to the path.
            if let Some(field) = unknown_field(&msg) {
                if path.0.last() != Some(&Seg::Key(field.clone())) {
                    path = path.key(&field);
                }
                return self.problem(&path, tidy_unknown(&msg));
            }
            self.problem(&path, tidy(&msg))
        })
    }
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Value(&'a toml_edit::Value),
    Table(&'a toml_edit::Table),
}

fn line_rec(text: &str, node: Node<'_>, rest: &[Seg], best: Option<usize>) -> Option<usize> {
    use toml_edit::{Item, Value};
    let Some((seg, tail)) = rest.split_first() else { return best };
    let at = |span: Option<std::ops::Range<usize>>| span.map(|s| line_of(text, s.start)).or(best);
    match (seg, node) {
        (Seg::Key(k), Node::Item(Item::Table(t))) | (Seg::Key(k), Node::Table(t)) => match t.get_key_value(k) {
            Some((key, next)) => line_rec(text, Node::Item(next), tail, at(key.span())),
            None => best,
        },
        (Seg::Key(k), Node::Item(Item::Value(Value::InlineTable(t)))) | (Seg::Key(k), Node::Value(Value::InlineTable(t))) => match t.get_key_value(k) {
            Some((key, next)) => line_rec(text, Node::Item(next), tail, at(key.span())),
            None => best,
        },
        (Seg::Index(i), Node::Item(Item::ArrayOfTables(a))) => match a.get(*i) {
            Some(t) => line_rec(text, Node::Table(t), tail, at(t.span())),
            None => best,
        },
        (Seg::Index(i), Node::Item(Item::Value(Value::Array(a)))) | (Seg::Index(i), Node::Value(Value::Array(a))) => match a.get(*i) {
            Some(v) => line_rec(text, Node::Value(v), tail, at(v.span())),
            None => best,
        },
        _ => best,
    }
}

/// 1-based line of byte offset `at` in `text`.
pub fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

fn tidy_unknown(msg: &str) -> String {
    // "unknown field `x`, expected one of `a`, `b`" → "unknown key (expected one of a, b)"
    match msg.find(", expected") {
        Some(i) => format!("unknown key (expected{})", msg[i + ", expected".len()..].replace('`', "")),
        None => "unknown key".to_string(),
    }
}

fn tidy(msg: &str) -> String {
    msg.replace("invalid type: ", "wrong type: ").replace('`', "")
}
