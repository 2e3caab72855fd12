//! "Did you mean ...?" for mistyped parent names.
//!
//! Parent names are PCI addresses (`0000:3b:00.0`) that are easy to mistype or
//! to give without the domain (`3b:00.0`). This picks the closest registered name,
//! or none when nothing is close enough to help.

/// The candidate closest to `name`, if any is a plausible typo of it.
///
/// Matches, best first: the same name in another case; a candidate that ends
/// with `name` (a PCI address without its domain); the smallest edit distance
/// that is at most a third of the name's length (and at least 1).
pub fn suggest<'a, I>(name: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    let candidates: Vec<&str> = candidates.into_iter().filter(|c| *c != name).collect();
    if let Some(c) = candidates.iter().find(|c| c.eq_ignore_ascii_case(name)) {
        return Some((*c).to_string());
    }
    if !name.is_empty() {
        let lower = name.to_ascii_lowercase();
        let mut tails: Vec<&&str> = candidates
            .iter()
            .filter(|c| c.to_ascii_lowercase().ends_with(&lower))
            .collect();
        if tails.len() == 1 {
            return tails.pop().map(|c| (*c).to_string());
        }
    }
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c.to_string())
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur.push(substitute.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENTS: [&str; 3] = ["0000:3b:00.0", "0000:af:00.0", "mtty"];

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn a_one_digit_typo_is_suggested() {
        assert_eq!(
            suggest("0000:3c:00.0", PARENTS),
            Some("0000:3b:00.0".into())
        );
    }

    #[test]
    fn a_pci_address_without_domain_is_completed() {
        assert_eq!(suggest("af:00.0", PARENTS), Some("0000:af:00.0".into()));
    }

    #[test]
    fn case_is_forgiven() {
        assert_eq!(
            suggest("0000:AF:00.0", PARENTS),
            Some("0000:af:00.0".into())
        );
        assert_eq!(suggest("MTTY", PARENTS), Some("mtty".into()));
    }

    #[test]
    fn nothing_close_gives_none() {
        assert_eq!(suggest("i915", PARENTS), None);
        assert_eq!(suggest("anything", []), None);
    }

    #[test]
    fn an_ambiguous_tail_falls_back_to_distance() {
        // "00.0" ends both PCI names: no single completion, and too far from each.
        assert_eq!(suggest("00.0", PARENTS), None);
    }
}
