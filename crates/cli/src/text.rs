//! Guest-supplied text made safe to print on an operator's terminal.
//!
//! A VM's guest agent chooses its process names, command lines, OS and GPU names; the
//! daemon validates them (no C0/C1 control characters, bounded lengths) but a guest may
//! still send characters that are not controls and yet change how a line reads: bidi
//! overrides and isolates (U+202E turns `evil\u{202e}gpj.exe` into what looks like
//! `evilexe.jpg`), zero-width spaces and joiners, line and paragraph separators, the
//! byte-order mark, invisible tag characters. [`guest_text`] is the one place that decides
//! which characters a text view may print as they are; every guest string in text output
//! goes through it, and every other character is escaped visibly as `\u{…}` (lower-case
//! hex, Rust's spelling).
//!
//! What is escaped: every `char::is_control` character (C0, DEL, C1: the daemon refuses
//! them, this is the second line of defense against an older daemon or a new field), and
//! the invisible or reordering format characters U+00AD, U+061C, U+180E, U+200B–U+200F,
//! U+2028–U+202E, U+2060–U+2064, U+2066–U+206F, U+FEFF, U+FFF9–U+FFFB, U+E0000–U+E007F.
//! A backslash is printed as it is (Windows guests' paths stay readable), so a guest can
//! write text that *looks like* an escape, but it cannot hide or reorder text.
//!
//! `--json` output is not passed through here: it stays the API's JSON, where serde escapes
//! control characters (`\u001b`) and leaves every other character, bidi controls included,
//! as it is. A program reading the JSON gets the guest's exact string and must render it
//! safely itself.

use std::borrow::Cow;

/// Whether `c` may not be printed raw in a text view (see the module doc for the set).
pub fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// `s` with every character [`must_escape`] names written as `\u{…}`; borrowed when
/// nothing needed escaping.
pub fn guest_text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(must_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if must_escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in [
            "python3",
            "train.py --lr 0.1",
            "C:\\Python\\python.exe",
            "日本語 ü é",
        ] {
            assert!(matches!(guest_text(s), Cow::Borrowed(b) if b == s), "{s}");
        }
    }

    #[test]
    fn bidi_zero_width_separators_and_bom_are_escaped_visibly() {
        assert_eq!(guest_text("evil\u{202E}gpj.exe"), "evil\\u{202e}gpj.exe");
        for c in ('\u{2066}'..='\u{2069}')
            .chain('\u{200B}'..='\u{200F}')
            .chain(['\u{2028}', '\u{2029}', '\u{FEFF}', '\u{202A}', '\u{E0041}'])
        {
            let s = format!("a{c}b");
            let shown = guest_text(&s);
            assert!(!shown.contains(c), "{c:?} printed raw");
            assert_eq!(shown, format!("a\\u{{{:x}}}b", c as u32));
        }
    }

    #[test]
    fn c0_c1_and_del_controls_are_escaped() {
        assert_eq!(guest_text("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(guest_text("l1\nl2\r\t"), "l1\\u{a}l2\\u{d}\\u{9}");
        assert_eq!(guest_text("\u{7f}\u{85}\u{9b}"), "\\u{7f}\\u{85}\\u{9b}");
        assert!(guest_text("\0").chars().all(|c| c.is_ascii_graphic()));
    }
}
