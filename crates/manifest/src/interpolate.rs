//! `${NAME}` references in environment values: finding them, and filling them in.
//!
//! `$$` is a literal `$`; a `$` not followed by `{` or `$` is kept as it is. Filling in happens on
//! the agent (the only place secret values exist); the manifest only collects the names.

/// The names referenced by `value`, in order of first appearance, without duplicates.
pub fn references(value: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    walk(value, |piece| {
        if let Piece::Reference(name) = piece
            && !names.iter().any(|known: &String| known == name)
        {
            names.push(name.to_owned());
        }
    })?;
    Ok(names)
}

/// `value` with every `${NAME}` replaced by `lookup(NAME)`; every name `lookup` lacks is returned.
pub fn interpolate(
    value: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Unresolved> {
    let mut out = String::with_capacity(value.len());
    let mut missing = Vec::new();
    walk(value, |piece| match piece {
        Piece::Text(text) => out.push_str(text),
        Piece::Reference(name) => match lookup(name) {
            Some(found) => out.push_str(&found),
            None => {
                if !missing.iter().any(|known: &String| known == name) {
                    missing.push(name.to_owned());
                }
            }
        },
    })
    .map_err(Unresolved::Syntax)?;
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(Unresolved::Missing(missing))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    Syntax(String),
    Missing(Vec<String>),
}

/// A valid environment variable name: a letter or `_`, then letters, digits or `_`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

enum Piece<'a> {
    Text(&'a str),
    Reference(&'a str),
}

fn walk<'a>(value: &'a str, mut on_piece: impl FnMut(Piece<'a>)) -> Result<(), String> {
    let mut rest = value;
    while let Some(dollar) = rest.find('$') {
        on_piece(Piece::Text(&rest[..dollar]));
        let after = &rest[dollar + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            on_piece(Piece::Text("$"));
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let close = body
                .find('}')
                .ok_or_else(|| "`${` is not closed with `}`".to_owned())?;
            let name = &body[..close];
            if !is_env_name(name) {
                return Err(format!(
                    "`${{{name}}}` is not a valid reference: names use letters, digits and `_`, and do not start with a digit"
                ));
            }
            on_piece(Piece::Reference(name));
            rest = &body[close + 1..];
        } else {
            on_piece(Piece::Text("$"));
            rest = after;
        }
    }
    on_piece(Piece::Text(rest));
    Ok(())
}

#[cfg(test)]
mod tests;
