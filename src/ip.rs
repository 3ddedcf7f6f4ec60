//! IP addresses as spec §3 reads and writes them: parsed from trimmed text (an IPv4-mapped
//! IPv6 address taken as its IPv4 address), written as dotted decimal or RFC 5952 text, and
//! truncated to a prefix.
//!
//! The text is written by hand into a stack buffer rather than through `core::fmt`: every IP
//! token and every rewritten address passes through here, and the formatting machinery cost
//! more than the rest of the address's handling. A test holds the writer to std's `Display`
//! (which is RFC 5952) on every arrangement of zero groups.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Text of a canonical IP, on the stack (the longest IPv6 text is 39 bytes, the longest
/// IPv4 text 15).
pub struct IpText {
    bytes: [u8; 40],
    len: usize,
}

impl IpText {
    /// The address text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("IP text is ASCII")
    }

    /// The address text's bytes, without the UTF-8 check `as_str` makes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    /// An octet in decimal, without leading zeros.
    fn push_decimal(&mut self, octet: u8) {
        if octet >= 100 {
            self.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            self.push(b'0' + octet / 10 % 10);
        }
        self.push(b'0' + octet % 10);
    }

    /// A group in lower-case hexadecimal, without leading zeros.
    fn push_hex(&mut self, group: u16) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut started = false;
        for shift in [12u32, 8, 4, 0] {
            let nibble = usize::from((group >> shift) & 0xf);
            started |= nibble != 0 || shift == 0;
            if started {
                self.push(DIGITS[nibble]);
            }
        }
    }

    fn push_groups(&mut self, groups: &[u16]) {
        for (i, &group) in groups.iter().enumerate() {
            if i > 0 {
                self.push(b':');
            }
            self.push_hex(group);
        }
    }
}

/// Parses an IP the way spec §3 canonicalizes it: surrounding white space trimmed, an
/// IPv4-mapped IPv6 address taken as its IPv4 address. `None` when it is not an IP.
pub fn parse_ip(value: &str) -> Option<IpAddr> {
    let ip: IpAddr = value.trim().parse().ok()?;
    Some(unmap(ip))
}

/// An IPv4-mapped IPv6 address as its IPv4 address; any other address as it is.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Canonical text of an address: dotted decimal, or RFC 5952 (lower case, the longest run of
/// two or more zero groups compressed to `::`, the first such run on a tie).
pub fn ip_text(ip: IpAddr) -> IpText {
    let mut text = IpText {
        bytes: [0; 40],
        len: 0,
    };
    match unmap(ip) {
        IpAddr::V4(v4) => write_v4(&mut text, v4),
        IpAddr::V6(v6) => write_v6(&mut text, v6),
    }
    text
}

fn write_v4(text: &mut IpText, v4: Ipv4Addr) {
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push(b'.');
        }
        text.push_decimal(octet);
    }
}

fn write_v6(text: &mut IpText, v6: Ipv6Addr) {
    let groups = v6.segments();
    // The longest run of zero groups (the first of equal runs).
    let (mut best_start, mut best_len) = (0, 0);
    let (mut run_start, mut run_len) = (0, 0);
    for (i, &group) in groups.iter().enumerate() {
        if group == 0 {
            if run_len == 0 {
                run_start = i;
            }
            run_len += 1;
            if run_len > best_len {
                (best_start, best_len) = (run_start, run_len);
            }
        } else {
            run_len = 0;
        }
    }
    // RFC 5952 §4.2.2: a single zero group is written, not compressed.
    if best_len > 1 {
        text.push_groups(&groups[..best_start]);
        text.push(b':');
        text.push(b':');
        text.push_groups(&groups[best_start + best_len..]);
    } else {
        text.push_groups(&groups);
    }
}

/// Zeroes the host bits of an address: keeps `v4_prefix` / `v6_prefix` leading bits.
pub fn truncate_ip(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(v4_prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6_prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ips_canonicalize() {
        let text = |s: &str| ip_text(parse_ip(s).unwrap()).as_str().to_owned();
        assert_eq!(text("2001:DB8:0:0:0:0:0:1"), "2001:db8::1");
        assert_eq!(text("2001:db8:0:1:1:1:1:1"), "2001:db8:0:1:1:1:1:1");
        assert_eq!(text("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(text(" 10.0.0.1 "), "10.0.0.1");
        assert_eq!(text("::"), "::");
        assert_eq!(text("::1"), "::1");
        assert_eq!(text("1::"), "1::");
        assert_eq!(text("1:0:0:2:0:0:0:3"), "1:0:0:2::3");
        assert_eq!(text("1:0:0:2:0:0:3:4"), "1::2:0:0:3:4");
        assert_eq!(text("255.255.255.255"), "255.255.255.255");
        assert!(parse_ip("10.0.0.256").is_none());
        assert_eq!(
            truncate_ip(parse_ip("192.0.2.77").unwrap(), 24, 48).to_string(),
            "192.0.2.0"
        );
        assert_eq!(
            truncate_ip(parse_ip("2001:db8:aa:bb::1").unwrap(), 24, 48).to_string(),
            "2001:db8:aa::"
        );
    }

    /// Every arrangement of zero and non-zero groups (2^8), with non-zero groups of every hex
    /// width, written as std's `Display` (RFC 5952) writes it.
    #[test]
    fn v6_text_is_std_display_for_every_zero_pattern() {
        let widths = [0x1u16, 0xa0, 0xbcd, 0xffff, 0x1000, 0x0f0f];
        for zeros in 0u32..256 {
            for first in 0..widths.len() {
                let mut groups = [0u16; 8];
                for (i, group) in groups.iter_mut().enumerate() {
                    if zeros & (1 << i) == 0 {
                        *group = widths[(first + i) % widths.len()];
                    }
                }
                let v6 = Ipv6Addr::from(groups);
                let expected = match v6.to_ipv4_mapped() {
                    Some(v4) => v4.to_string(),
                    None => v6.to_string(),
                };
                assert_eq!(ip_text(IpAddr::V6(v6)).as_str(), expected, "{groups:x?}");
            }
        }
    }

    #[test]
    fn v4_text_is_std_display_for_every_octet() {
        for octet in 0..=255u8 {
            let v4 = Ipv4Addr::new(octet, 0, 255 - octet, octet / 3);
            assert_eq!(ip_text(IpAddr::V4(v4)).as_str(), v4.to_string());
        }
    }

    proptest! {
        #[test]
        fn text_is_std_display(bits in any::<u128>(), v4 in any::<u32>(), zero_mask in any::<u8>()) {
            // Random addresses rarely hold zero groups: clear some.
            let mut groups = Ipv6Addr::from(bits).segments();
            for (i, group) in groups.iter_mut().enumerate() {
                if zero_mask & (1 << i) != 0 {
                    *group = 0;
                }
            }
            let v6 = Ipv6Addr::from(groups);
            let expected = match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => v6.to_string(),
            };
            prop_assert_eq!(ip_text(IpAddr::V6(v6)).as_str().to_owned(), expected);
            let v4 = Ipv4Addr::from(v4);
            prop_assert_eq!(ip_text(IpAddr::V4(v4)).as_str().to_owned(), v4.to_string());
            // What the text reads back as is the address.
            prop_assert_eq!(parse_ip(ip_text(IpAddr::V6(v6)).as_str()), Some(unmap(IpAddr::V6(v6))));
        }
    }
}
