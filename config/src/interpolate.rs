//! `${VAR}` interpolation of string values.

/// Expands `${VAR}` and `${VAR:-default}` in `input` from the environment;
/// `$$` is a literal `$`. A `$` not followed by `{` or `$` is kept as is.
///
/// Errors name the variable and say how to fix it.
pub fn interpolate(input: &str) -> Result<String, String> {
    interpolate_with(input, |name| std::env::var(name).ok())
}

pub(crate) fn interpolate_with(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if !input.contains('$') {
        return Ok(input.to_string());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| {
                format!(
                    "unterminated `${{` in {input:?}: write `${{NAME}}`, or `$$` for a literal `$`"
                )
            })?;
            let expr = &body[..end];
            let (name, default) = match expr.find(":-") {
                Some(i) => (&expr[..i], Some(&expr[i + 2..])),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "invalid environment variable name {name:?} in `${{{expr}}}`: use letters, digits and `_`"
                ));
            }
            match (lookup(name), default) {
                (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (used as `${{{name}}}`): set it, or write `${{{name}:-default}}`"
                    ))
                }
                (Some(v), None) => out.push_str(&v),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::interpolate_with;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        assert_eq!(interpolate_with("a-${TOKEN}-b", env).unwrap(), "a-s3cret-b");
        assert_eq!(interpolate_with("${NOPE:-x}", env).unwrap(), "x");
        assert_eq!(interpolate_with("${EMPTY:-x}", env).unwrap(), "x");
        assert_eq!(interpolate_with("${EMPTY}", env).unwrap(), "");
        assert_eq!(interpolate_with("$$5 and $x", env).unwrap(), "$5 and $x");
    }

    #[test]
    fn missing_variable_is_named() {
        let err = interpolate_with("${NOPE}", env).unwrap_err();
        assert!(err.contains("NOPE is not set"), "{err}");
        assert!(interpolate_with("${TOKEN", env)
            .unwrap_err()
            .contains("unterminated"));
        assert!(interpolate_with("${A B}", env)
            .unwrap_err()
            .contains("invalid"));
    }
}
