//! The state file (`--state-file`): the relay's state image written on SIGTERM, atomically
//! (a temporary file beside it, fsync, rename, fsync of the directory), and read back at start,
//! once: a file restored is moved aside to `PATH.restored`, so that a relay that crashes leaves
//! nothing to start from again; a file that cannot be restored is moved aside to
//! `PATH.refused-PID`, so that the relay starts empty and the file stays for whoever wants to
//! look at it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use crate::config::Settings;
use crate::state::{self, State};

/// Writes `image` to `path` so that a crash at any moment leaves either the old file or the
/// new one, whole.
pub fn write(path: &Path, image: &[u8]) -> io::Result<()> {
    let named = |e: io::Error, what: &str, p: &Path| {
        io::Error::new(
            e.kind(),
            format!("--state-file: {what} {}: {e}", p.display()),
        )
    };
    let tmp = sibling(path, "tmp");
    // Whatever is left there (a file of another mode, a symlink to follow) is removed, not
    // written through: the file is made anew, and refused if anything appears there meanwhile.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(named(e, "cannot remove", &tmp));
        }
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        // Sessions derive from the keys inside: the file is the relay's user's alone.
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| named(e, "cannot create", &tmp))?;
    f.write_all(image)
        .and_then(|()| f.sync_all())
        .map_err(|e| named(e, "cannot write", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| named(e, "cannot rename to", path))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| named(e, "cannot sync the directory", dir))
}

/// The state in `path`, restored for a relay of `settings` with `workers` workers, the file
/// then moved to `PATH.restored`: `None` (an empty start) if there is no file, or if it cannot
/// be restored or moved, which the log says, and the file is then moved aside.
pub fn restore(path: &Path, settings: &Settings, workers: usize) -> Option<State> {
    let image = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            info!(path = %path.display(), "no state file: starting empty");
            return None;
        }
        Err(e) => {
            error!(path = %path.display(), "cannot read the state file, starting empty: {e}");
            return None;
        }
    };
    match state::restore(&image, settings.clone(), workers, true) {
        Ok((restored, s)) => {
            // The file is consumed: a relay that crashes before it writes the state again
            // must not leave it for the next start, which would issue the registration numbers
            // (so the tokens) this one issues from it again. Moved, not removed, for whoever
            // wants to look at it.
            let used = sibling(path, "restored");
            if let Err(e) = fs::rename(path, &used) {
                error!(
                    path = %path.display(),
                    "cannot move the state file aside once read, starting empty (a later start \
                     from it would issue tokens again): {e}"
                );
                return None;
            }
            info!(
                path = %path.display(),
                written_by = %s.version,
                age_ms = s.age_ms,
                peers = s.registry.peers,
                stale = s.registry.stale,
                channels = s.channels,
                channels_left_out = s.channels_left_out,
                across_relays = s.across.0,
                across_relays_left_out = s.across.1,
                watches_left_out = s.registry.watches_left_out,
                "restored the state file"
            );
            Some(restored)
        }
        Err(why) => {
            let aside = sibling(path, &format!("refused-{}", std::process::id()));
            match fs::rename(path, &aside) {
                Ok(()) => error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    "the state file is refused, starting empty: {why}"
                ),
                Err(e) => warn!(
                    path = %path.display(),
                    "the state file is refused, starting empty: {why}; cannot move it aside: {e}"
                ),
            }
            None
        }
    }
}

/// `path` with `.suffix` added to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}
