//! Splitting an argument string the way a shell would, in the simple cases: whitespace separates
//! words; `'...'` is literal; `"..."` keeps spaces and allows `\"` and `\\`; outside quotes `\`
//! escapes the next character. No variables, globs or other expansions.

/// Splits `s` into words; an unterminated quote or a trailing `\` is an error.
pub(crate) fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word exists (even empty, as in `''`) once any of its characters or quotes was seen.
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated ' quote in `{s}`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unterminated \" quote in `{s}`")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated \" quote in `{s}`")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(format!("trailing \\ in `{s}`")),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        let w = |s: &str| split_words(s).unwrap();
        assert_eq!(w("  a  b\tc "), ["a", "b", "c"]);
        assert_eq!(w(""), Vec::<String>::new());
        assert_eq!(w("--msg 'hello world' x"), ["--msg", "hello world", "x"]);
        assert_eq!(w(r#"a"b c"d"#), ["ab cd"]);
        assert_eq!(w(r#""say \"hi\"" 'it''s'"#), ["say \"hi\"", "its"]);
        assert_eq!(w(r"a\ b"), ["a b"]);
        assert_eq!(w("'' x"), ["", "x"]);
        assert!(split_words("'open").is_err());
        assert!(split_words("\"open").is_err());
        assert!(split_words("end\\").is_err());
    }
}
