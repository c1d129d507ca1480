//! The files of an identity: the Ed25519 key (its 32-byte seed in base64, one line, readable by
//! its owner only) and `known_peers`, each peer's key pinned on first use (`<base64 key> <name>`
//! per line, as SSH's `known_hosts`).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;

/// A new key from the OS's random numbers.
pub fn generate() -> Result<SigningKey, String> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| format!("no random numbers from the OS: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `key` to a new file at `path` (mode 0600); never overwrites one.
pub fn save_key(path: &Path, key: &SigningKey) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create key file {}: {e}", path.display()))?;
    writeln!(f, "{}", B64.encode(key.to_bytes()))
        .map_err(|e| format!("cannot write key file {}: {e}", path.display()))
}

/// Reads the key at `path`, saying what is wrong with a file that is not one.
pub fn load_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    let seed = B64
        .decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            format!(
                "{} is not a key file: it must hold one line, a 32-byte Ed25519 seed in base64 \
                 (make one with `udp-chat keygen {}`)",
                path.display(),
                path.display()
            )
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A key as `known_peers` and messages show it.
pub fn show(key: &[u8; 32]) -> String {
    B64.encode(key)
}

/// Reads `known_peers` (none yet: empty).
pub fn load_known(path: &Path) -> Result<HashMap<String, [u8; 32]>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut known = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.split_once(' ').and_then(|(k, name)| {
            let key = <[u8; 32]>::try_from(B64.decode(k).ok()?).ok()?;
            Some((name.to_string(), key))
        });
        let (name, key) = parsed.ok_or_else(|| {
            format!(
                "{} line {}: expected `<base64 key> <name>`",
                path.display(),
                i + 1
            )
        })?;
        known.insert(name, key);
    }
    Ok(known)
}

/// Appends a pinned key to `known_peers`.
pub fn pin(path: &Path, name: &str, key: &[u8; 32]) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    writeln!(f, "{} {name}", show(key)).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_pins_round_trip_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("udp-peer-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kf = dir.join("k");
        let _ = std::fs::remove_file(&kf);
        let k = generate().unwrap();
        save_key(&kf, &k).unwrap();
        assert!(save_key(&kf, &k).is_err(), "never overwritten");
        assert_eq!(load_key(&kf).unwrap().to_bytes(), k.to_bytes());
        std::fs::write(dir.join("bad"), "hello").unwrap();
        let e = load_key(&dir.join("bad")).unwrap_err();
        assert!(e.contains("not a key file"), "{e}");
        let kp = dir.join("known");
        let _ = std::fs::remove_file(&kp);
        assert!(load_known(&kp).unwrap().is_empty());
        pin(&kp, "bob smith", &[7; 32]).unwrap();
        assert_eq!(load_known(&kp).unwrap()["bob smith"], [7; 32]);
        std::fs::write(&kp, "junk\n").unwrap();
        assert!(load_known(&kp).unwrap_err().contains("line 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
