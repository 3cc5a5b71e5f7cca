//! Text for people: numbers with digit grouping, and text from files made safe to print.

use std::borrow::Cow;

/// `n` with its thousands separated by commas: 269722 → "269,722".
pub fn grouped(n: impl Into<u128>) -> String {
    let digits = n.into().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// Seconds as people read them: "7.1s", "2m05s", "1h02m03s".
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".to_string();
    }
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 { format!("{h}h{m:02}m{s:02}s") } else { format!("{m}m{s:02}s") }
}

/// Text read from a file (class names, metadata), safe to print on a terminal: control
/// characters, which could move the cursor, erase lines or set the window title, are
/// shown escaped (`\u{1b}`) instead of being sent to the terminal.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().map(|c| if is_unsafe(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect())
}

/// Control characters (C0, DEL, C1) and the bidirectional overrides that reorder what a
/// line shows.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(grouped(0u32), "0");
        assert_eq!(grouped(999u32), "999");
        assert_eq!(grouped(1000u32), "1,000");
        assert_eq!(grouped(269_722u32), "269,722");
        assert_eq!(grouped(25_557_032u64), "25,557,032");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(7.07), "7.1s");
        assert_eq!(duration(125.0), "2m05s");
        assert_eq!(duration(3723.4), "1h02m03s");
        assert_eq!(duration(f64::INFINITY), "?");
    }

    #[test]
    fn escapes_what_a_terminal_would_obey() {
        assert_eq!(printable("tabby cat"), "tabby cat");
        assert_eq!(printable("\u{1b}]0;owned\u{7}x"), "\\u{1b}]0;owned\\u{7}x");
        assert_eq!(printable("a\nb\rc\u{9b}"), "a\\u{a}b\\u{d}c\\u{9b}");
        assert_eq!(printable("\u{202e}gnp.exe"), "\\u{202e}gnp.exe");
        assert_eq!(printable("café 猫"), "café 猫");
    }
}
