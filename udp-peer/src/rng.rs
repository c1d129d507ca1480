//! The endpoint's own random numbers (session ids, probe ids, STUN transactions): SplitMix64
//! from a seed the caller gives, so that a simulated run is the same run every time. Nothing
//! secret comes from here: Noise takes its keys from the OS, and so does the STUN client its
//! transaction ids, which are all that authenticate the relay's answers (SplitMix64's outputs
//! give its state away).

/// SplitMix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next number.
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A non-zero u32 (a session id).
    pub fn id(&mut self) -> u32 {
        loop {
            let v = self.u64() as u32;
            if v != 0 {
                return v;
            }
        }
    }
}

/// A non-zero u32 from the OS's random numbers: a session id, which must differ from any a
/// restarted peer had, whatever its seed.
pub fn unguessable_id() -> u32 {
    loop {
        let mut b = [0u8; 4];
        getrandom::getrandom(&mut b).expect("the OS's random numbers");
        let v = u32::from_ne_bytes(b);
        if v != 0 {
            return v;
        }
    }
}
