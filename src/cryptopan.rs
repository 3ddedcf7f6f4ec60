//! Crypto-PAn: prefix-preserving IP address pseudonymization (Xu, Fan, Ammar, Moon, ICNP 2002).
//!
//! The 32-byte working key splits into an AES-128 key (first 16 bytes) and a pad seed (last 16
//! bytes), which is encrypted once to give the pad. Bit `i` of the output is bit `i` of the input
//! XOR the top bit of `AES(first i input bits || pad bits after i)`, so two addresses that share
//! an n-bit prefix map to addresses that share exactly an n-bit prefix. IPv4 runs over 32 bits,
//! IPv6 over 128, both as in the paper's reference code.

use std::net::{Ipv4Addr, Ipv6Addr};

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128, Block};
use zeroize::Zeroize;

/// A Crypto-PAn cipher.
pub struct CryptoPan {
    aes: Aes128,
    pad: u128,
}

impl CryptoPan {
    /// Builds the cipher from the 32-byte Crypto-PAn working key.
    pub fn new(key: &[u8; 32]) -> Self {
        let aes = Aes128::new_from_slice(&key[..16]).expect("16-byte AES-128 key");
        let mut block = Block::clone_from_slice(&key[16..]);
        aes.encrypt_block(&mut block);
        let pad = u128::from_be_bytes(block.into());
        block.as_mut_slice().zeroize();
        CryptoPan { aes, pad }
    }

    /// Anonymizes an IPv4 address over its 32 bits.
    pub fn anonymize_v4(&self, addr: Ipv4Addr) -> Ipv4Addr {
        // The 32 address bits sit in the top of the 128-bit block; the rest is pad.
        let bits = (u32::from(addr) as u128) << 96;
        let out = self.anonymize_bits(bits, 32);
        Ipv4Addr::from((out >> 96) as u32)
    }

    /// Anonymizes an IPv6 address over its 128 bits.
    pub fn anonymize_v6(&self, addr: Ipv6Addr) -> Ipv6Addr {
        Ipv6Addr::from(self.anonymize_bits(u128::from(addr), 128))
    }

    /// `addr` holds the address in its top `width` bits.
    fn anonymize_bits(&self, addr: u128, width: u32) -> u128 {
        let mut flips: u128 = 0;
        for pos in 0..width {
            // Top `pos` bits from the address, the remaining bits from the pad.
            let input = if pos == 0 {
                self.pad
            } else {
                let keep = !0u128 << (128 - pos);
                (addr & keep) | (self.pad & !keep)
            };
            let mut block = Block::from(input.to_be_bytes());
            self.aes.encrypt_block(&mut block);
            let bit = (block[0] >> 7) as u128;
            flips |= bit << (127 - pos);
        }
        addr ^ flips
    }
}

impl std::fmt::Debug for CryptoPan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CryptoPan(..)")
    }
}

impl Drop for CryptoPan {
    fn drop(&mut self) {
        self.pad.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common_prefix(a: u128, b: u128) -> u32 {
        (a ^ b).leading_zeros()
    }

    #[test]
    fn preserves_prefixes_exactly() {
        let pan = CryptoPan::new(&[7u8; 32]);
        let pairs = [
            ("10.1.2.3", "10.1.2.200"),
            ("10.1.2.3", "10.1.200.3"),
            ("10.1.2.3", "192.168.0.1"),
            ("1.2.3.4", "1.2.3.5"),
        ];
        for (a, b) in pairs {
            let (a, b): (Ipv4Addr, Ipv4Addr) = (a.parse().unwrap(), b.parse().unwrap());
            let before = common_prefix((u32::from(a) as u128) << 96, (u32::from(b) as u128) << 96);
            let (x, y) = (pan.anonymize_v4(a), pan.anonymize_v4(b));
            let after = common_prefix((u32::from(x) as u128) << 96, (u32::from(y) as u128) << 96);
            assert_eq!(before.min(32), after.min(32), "{a} {b} -> {x} {y}");
            assert_ne!(a, x);
        }
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8::ffff:1".parse().unwrap();
        let (x, y) = (pan.anonymize_v6(a), pan.anonymize_v6(b));
        assert_eq!(
            common_prefix(a.into(), b.into()),
            common_prefix(x.into(), y.into())
        );
    }
}
