//! The channel data frame (Part 4): `0xD1`, a flags byte (0), the channel number (u32,
//! big-endian), then the payload, which the relay never reads.

/// The first byte of every frame.
pub const MARK: u8 = 0xD1;
/// The bytes before the payload.
pub const HEADER: usize = 6;

/// Why a frame's header does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than the header.
    Short,
    /// Flags other than zero.
    Flags,
}

/// The channel number of frame `d`.
pub fn channel(d: &[u8]) -> Result<u32, FrameError> {
    let h: &[u8; HEADER] = d
        .get(..HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Short)?;
    if h[1] != 0 {
        return Err(FrameError::Flags);
    }
    Ok(u32::from_be_bytes([h[2], h[3], h[4], h[5]]))
}

/// Rewrites the channel number of frame `d` (whose header [`channel`] accepted) in place.
pub fn set_channel(d: &mut [u8], channel: u32) {
    d[2..HEADER].copy_from_slice(&channel.to_be_bytes());
}

/// Appends a frame for `channel` carrying `payload` (what a peer sends).
pub fn write(buf: &mut Vec<u8>, channel: u32, payload: &[u8]) {
    buf.extend_from_slice(&[MARK, 0]);
    buf.extend_from_slice(&channel.to_be_bytes());
    buf.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_rewrite_in_place() {
        let mut d = Vec::new();
        write(&mut d, 0x0102_0304, b"payload");
        assert_eq!(channel(&d), Ok(0x0102_0304));
        set_channel(&mut d, 7);
        assert_eq!(&d[..HEADER], &[MARK, 0, 0, 0, 0, 7]);
        assert_eq!(&d[HEADER..], b"payload");
        assert_eq!(channel(&d[..5]), Err(FrameError::Short));
        d[1] = 1;
        assert_eq!(channel(&d), Err(FrameError::Flags));
        assert_eq!(
            channel(&[MARK, 0, 0, 0, 0, 0]),
            Ok(0),
            "zero parses; no channel has it"
        );
    }
}
