//! Positions in the config text: key paths, span look-up in the parsed document, and
//! byte offset to line/column conversion.

use std::fmt;
use std::ops::Range;

use toml::de::DeValue;
use toml::Spanned;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    /// 0-based index into an array (displayed 1-based, see [`KeyPath`]).
    Index(usize),
}

/// A key path such as `pool.web.backoff.max`.
///
/// Array indexes are stored 0-based but displayed 1-based, the way people count:
/// the first `[[route]]` is `route[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(pub Vec<Seg>);

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

    pub fn join(&self, other: &KeyPath) -> Self {
        let mut p = self.clone();
        p.0.extend(other.0.iter().cloned());
        p
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `prefix` is this path or one of its ancestors.
    pub fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// This path without its trailing array indexes (the key holding the array).
    pub fn without_trailing_indexes(&self) -> Self {
        let mut p = self.clone();
        while matches!(p.0.last(), Some(Seg::Index(_))) {
            p.0.pop();
        }
        p
    }
}

fn is_bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_bare_key(k) {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{}]", n.saturating_add(1))?,
            }
        }
        Ok(())
    }
}

/// The key span (when the value sits under a key) and the value found at `path`.
pub(crate) fn lookup<'a, 'i>(
    root: &'a Spanned<DeValue<'i>>,
    path: &KeyPath,
) -> Option<(Option<Range<usize>>, &'a Spanned<DeValue<'i>>)> {
    let mut cur = root;
    let mut key_span = None;
    for seg in &path.0 {
        match (seg, cur.get_ref()) {
            (Seg::Key(k), DeValue::Table(t)) => {
                let (key, value) = t.get_key_value(k.as_str())?;
                key_span = Some(key.span());
                cur = value;
            }
            (Seg::Index(i), DeValue::Array(a)) => {
                cur = a.get(*i)?;
                key_span = None;
            }
            _ => return None,
        }
    }
    Some((key_span, cur))
}

/// Removes the key at `path` (which must end with a key). Returns whether it was there.
pub(crate) fn remove(root: &mut Spanned<DeValue<'_>>, path: &KeyPath) -> bool {
    let Some((last, parents)) = path.0.split_last() else {
        return false;
    };
    let mut cur = root;
    for seg in parents {
        let next = match (seg, cur.get_mut()) {
            (Seg::Key(k), DeValue::Table(t)) => t.get_mut(k.as_str()),
            (Seg::Index(i), DeValue::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (last, cur.get_mut()) {
        (Seg::Key(k), DeValue::Table(t)) => t.remove(k.as_str()).is_some(),
        _ => false,
    }
}

/// The span of the value at `path`, or of its nearest ancestor that exists (a missing
/// key is reported at the table that lacks it).
pub(crate) fn value_span(root: &Spanned<DeValue<'_>>, path: &KeyPath) -> Range<usize> {
    let mut p = path.clone();
    loop {
        if let Some((_, v)) = lookup(root, &p) {
            return v.span();
        }
        if p.0.pop().is_none() {
            return root.span();
        }
    }
}

/// The span of the key at `path` (falling back to [`value_span`]).
pub(crate) fn key_span(root: &Spanned<DeValue<'_>>, path: &KeyPath) -> Range<usize> {
    match lookup(root, path) {
        Some((Some(k), _)) => k,
        _ => value_span(root, path),
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut off = offset.min(text.len());
    while off > 0 && !text.is_char_boundary(off) {
        off -= 1;
    }
    let before = text.get(..off).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// A short description of a value for "found ..." in messages.
pub(crate) fn describe_value(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => quote(s),
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(x) => format!("float {x}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(d) => format!("datetime {d}"),
        DeValue::Array(_) => "an array".to_string(),
        DeValue::Table(_) => "a table".to_string(),
    }
}

/// `s` quoted for a message, cut short when long.
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() > MAX {
        let cut: String = s.chars().take(MAX - 3).collect();
        format!("{cut:?}...")
    } else {
        format!("{s:?}")
    }
}
