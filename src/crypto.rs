//! Small crypto helpers: random bytes, HMAC-SHA256, SHA-256, AES-256-GCM sealing, hex.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

pub fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// A 256-bit key derived from a configured secret.
pub fn key_from_secret(secret: &str) -> [u8; 32] {
    sha256(secret.as_bytes())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `nonce || ciphertext+tag`, with a random 96-bit nonce.
pub fn seal(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
    let nonce_bytes = random::<12>();
    let nonce = Nonce::try_from(&nonce_bytes[..]).expect("12-byte nonce");
    let mut out = nonce_bytes.to_vec();
    out.extend(cipher.encrypt(&nonce, plaintext).expect("encryption does not fail"));
    out
}

/// Inverse of [`seal`]; `None` when the key is wrong or the data was altered.
pub fn open(key: &[u8; 32], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 12 + 16 {
        return None;
    }
    let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
    let nonce = Nonce::try_from(&sealed[..12]).ok()?;
    cipher.decrypt(&nonce, &sealed[12..]).ok()
}

/// Equal-length comparison that does not stop at the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_rejects_tampering_and_wrong_keys() {
        let k = key_from_secret("k");
        let s = seal(&k, b"secret credentials");
        assert_eq!(open(&k, &s).as_deref(), Some(&b"secret credentials"[..]));
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert_eq!(open(&k, &t), None, "byte {i} flipped");
        }
        assert_eq!(open(&key_from_secret("other"), &s), None);
        assert_ne!(seal(&k, b"x"), seal(&k, b"x"), "nonces differ");
    }

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
    }
}
