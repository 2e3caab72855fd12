//! Tests of the pure parsers.

use super::*;

#[test]
fn creatable_lines_parse_with_spaces_and_blank_lines() {
    let t = parse_creatable("    1047 : NVIDIA H100-20C\n\n1048 : NVIDIA H100-40C\n").unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].id, 1047);
    assert_eq!(t[0].name, "NVIDIA H100-20C");
    assert!(t[0].matches("h100-20c"));
    assert!(t[0].matches("NVIDIA H100-20C"));
    assert!(!t[0].matches("H100-40C"));
    assert!(parse_creatable("").unwrap().is_empty());
}

#[test]
fn malformed_creatable_lines_are_refused_naming_the_line() {
    for bad in ["1047 NVIDIA", "x : NVIDIA H100-20C", "0 : zero", "12 : "] {
        let e = parse_creatable(&format!("1 : ok\n{bad}\n")).unwrap_err();
        assert!(e.starts_with("line 2"), "{bad}: {e}");
    }
    let long: String = (1..=300).map(|i| format!("{i} : T{i}\n")).collect();
    assert!(parse_creatable(&long).unwrap_err().contains("more than"));
}

#[test]
fn current_and_addresses() {
    assert_eq!(parse_current("0\n"), Ok(0));
    assert_eq!(parse_current(" 1047 "), Ok(1047));
    assert!(parse_current("none").is_err());
    assert!(valid_pci_address("0000:41:00.4"));
    assert!(!valid_pci_address("41:00.4"));
    assert!(!valid_pci_address("0000:41:00.8"));
    assert!(!valid_pci_address("../../etc/x"));
}
