//! A syntax check of email addresses: the common `local@domain` form, strict enough
//! to catch typos and stray text, without quoted local parts, IP literals or
//! non-ASCII (internationalized) addresses.
//!
//! - at most [`MAX_ADDRESS`] bytes, with exactly one `@`;
//! - the local part: 1 to [`MAX_LOCAL`] of `A-Z a-z 0-9 ! # $ % & ' * + / = ? ^ _ `` ` ``
//!   `{ | } ~ -` and `.`, with no dot first, last or twice in a row (RFC 5322
//!   "dot-atom");
//! - the domain: at least two labels separated by dots, each 1 to [`MAX_LABEL`] of
//!   `A-Z a-z 0-9 -` not starting or ending with `-`, and a last label (the top-level
//!   domain) that is not all digits.

/// The longest address (RFC 5321: a path of 256 octets, less the angle brackets).
const MAX_ADDRESS: usize = 254;

/// The longest local part (RFC 5321).
const MAX_LOCAL: usize = 64;

/// The longest domain label (RFC 1035).
const MAX_LABEL: usize = 63;

/// `Ok` when `address` passes the check, else why not, in a few words.
pub fn check(address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Err("it is empty".to_owned());
    }
    if let Some(bad) = address
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("it contains {bad:?}"));
    }
    if !address.is_ascii() {
        return Err(
            "it has characters outside ASCII: write the domain in its ASCII \
                    (xn--) form"
                .to_owned(),
        );
    }
    if address.len() > MAX_ADDRESS {
        return Err(format!(
            "it has {} characters; at most {MAX_ADDRESS} are allowed",
            address.len()
        ));
    }
    let Some((local, domain)) = address.split_once('@') else {
        return Err("it has no `@`".to_owned());
    };
    if domain.contains('@') {
        return Err("it has more than one `@`".to_owned());
    }
    check_local(local)?;
    check_domain(domain)
}

/// The part before the `@`.
fn check_local(local: &str) -> Result<(), String> {
    if local.is_empty() {
        return Err("nothing comes before the `@`".to_owned());
    }
    if local.len() > MAX_LOCAL {
        return Err(format!(
            "the part before the `@` has {} characters; at most {MAX_LOCAL} are allowed",
            local.len()
        ));
    }
    if let Some(bad) = local
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-.".contains(c)))
    {
        return Err(format!("{bad:?} is not allowed before the `@`"));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("a dot before the `@` must sit between other characters".to_owned());
    }
    Ok(())
}

/// The part after the `@`.
fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("nothing comes after the `@`".to_owned());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err(format!(
            "the domain {domain:?} has no dot (as in `example.com`)"
        ));
    }
    for label in &labels {
        if label.is_empty() {
            return Err(format!(
                "the domain {domain:?} has an empty part between dots"
            ));
        }
        if label.len() > MAX_LABEL {
            return Err(format!(
                "the domain part {label:?} is longer than {MAX_LABEL} characters"
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(format!("{bad:?} is not allowed in the domain"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the domain part {label:?} starts or ends with `-`"));
        }
    }
    let top = labels.last().copied().unwrap_or_default();
    if top.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "the domain {domain:?} ends in a number, not a top-level domain"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_addresses_pass() {
        for good in [
            "ann@example.com",
            "Ann.Lee+news@mail.example.co.uk",
            "o'brien@example.ie",
            "x@a-b.io",
            "1@2.xn--p1ai",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn bad_addresses_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("ann", "no `@`"),
            ("ann@", "after the `@`"),
            ("@example.com", "before the `@`"),
            ("a@b@example.com", "more than one"),
            ("ann lee@example.com", "' '"),
            ("ann@localhost", "no dot"),
            ("ann@example..com", "empty part"),
            ("ann@-example.com", "starts or ends"),
            ("ann@example.c_m", "'_'"),
            ("ann@10.0.0.1", "number"),
            (".ann@example.com", "dot"),
            ("ann..lee@example.com", "dot"),
            ("ann(x)@example.com", "'('"),
            ("zoë@example.com", "ASCII"),
        ] {
            let error = check(bad).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert!(check(&format!("{}@example.com", "a".repeat(65))).is_err());
        assert!(check(&format!("a@{}.com", "b".repeat(64))).is_err());
        assert!(check(&format!("a@{}.com", "b.".repeat(130))).is_err());
    }
}
