//! The header scanner: finds the routing fields of a JSON message without building it.
//!
//! It validates the whole document (RFC 8259 grammar, UTF-8 checked by the caller) in one pass
//! and records where `type`, `target`, `source` and `payload` are. Strings are checked, never
//! unescaped, except that routing-field strings and keys are decoded once to prove they are valid
//! Unicode (lone surrogates refused), because the router compares them with registered names.

/// Deepest nesting of arrays and objects accepted, the top-level object included.
pub const MAX_DEPTH: usize = 128;

/// A byte range of the scanned datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// The bytes this span covers in `buf`.
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start..self.end]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when the span covers nothing.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The contents (between the quotes) of a string value, still escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawStr {
    /// Where the contents lie.
    pub span: Span,
    /// Whether the contents hold a backslash escape.
    pub escaped: bool,
}

/// What the scanner found in a well-formed JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// The `type` string.
    pub ty: RawStr,
    /// The `target` string, if present.
    pub target: Option<RawStr>,
    /// The `source` string, if present.
    pub source: Option<RawStr>,
    /// The whole `payload` value (any JSON value), if present.
    pub payload: Option<Span>,
}

/// Why a datagram is not a scannable JSON message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// Not JSON: bad syntax, truncated, trailing bytes, or not an object at the top.
    Syntax,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A routing field appears twice.
    Duplicate,
    /// A routing field has the wrong JSON type.
    WrongType,
    /// There is no `type` field.
    MissingType,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Type,
    Target,
    Source,
    Payload,
    Other,
}

/// Scans `buf`, which must already be known to be valid UTF-8.
pub fn scan(buf: &[u8]) -> Result<Header, ScanError> {
    let mut s = Scanner { buf, pos: 0 };
    let h = s.top_object()?;
    s.skip_ws();
    if s.pos != buf.len() {
        return Err(ScanError::Syntax);
    }
    h.ok_or(ScanError::MissingType)
}

/// The scanner's cursor over a datagram, shared with the reader ([`crate::read`]), which walks
/// the same grammar.
pub(crate) struct Scanner<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl Scanner<'_> {
    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    pub(crate) fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    pub(crate) fn expect(&mut self, b: u8) -> Result<(), ScanError> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(ScanError::Syntax)
        }
    }

    /// Returns the header, or `None` when the object has no `type` field.
    fn top_object(&mut self) -> Result<Option<Header>, ScanError> {
        self.skip_ws();
        self.expect(b'{')?;
        let mut ty = None;
        let mut target = None;
        let mut source = None;
        let mut payload = None;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(None);
        }
        loop {
            self.skip_ws();
            let key = self.string()?;
            let field = self.field_of(key);
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            match field {
                Field::Other => self.value(1)?,
                Field::Payload => {
                    let start = self.pos;
                    self.value(1)?;
                    if payload.is_some() {
                        return Err(ScanError::Duplicate);
                    }
                    payload = Some(Span {
                        start,
                        end: self.pos,
                    });
                }
                Field::Type | Field::Target | Field::Source => {
                    if self.peek() != Some(b'"') {
                        // Validate first so that bad syntax is reported as such.
                        self.value(1)?;
                        return Err(ScanError::WrongType);
                    }
                    let s = self.string()?;
                    if s.escaped {
                        check_decodes(s.span.of(self.buf))?;
                    }
                    let slot = match field {
                        Field::Type => &mut ty,
                        Field::Target => &mut target,
                        _ => &mut source,
                    };
                    if slot.is_some() {
                        return Err(ScanError::Duplicate);
                    }
                    *slot = Some(s);
                }
            }
            self.skip_ws();
            if self.done_object()? {
                return Ok(ty.map(|ty| Header {
                    ty,
                    target,
                    source,
                    payload,
                }));
            }
        }
    }

    /// After a member: consumes `,` (returns false) or `}` (returns true).
    pub(crate) fn done_object(&mut self) -> Result<bool, ScanError> {
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(false)
            }
            Some(b'}') => {
                self.pos += 1;
                Ok(true)
            }
            _ => Err(ScanError::Syntax),
        }
    }

    fn field_of(&self, key: RawStr) -> Field {
        let raw = key.span.of(self.buf);
        let mut tmp = [0u8; 8];
        let name: &[u8] = if key.escaped {
            // A key that does not decode (a lone surrogate) is well-formed JSON but cannot be a
            // routing field's name: an unknown field, like any other.
            match unescape_into(raw, &mut tmp) {
                Some(s) => s.as_bytes(),
                None => return Field::Other,
            }
        } else {
            raw
        };
        match name {
            b"type" => Field::Type,
            b"target" => Field::Target,
            b"source" => Field::Source,
            b"payload" => Field::Payload,
            _ => Field::Other,
        }
    }

    /// Scans a string starting at the opening quote; returns its contents.
    pub(crate) fn string(&mut self) -> Result<RawStr, ScanError> {
        self.expect(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        let buf = self.buf;
        let mut i = self.pos;
        loop {
            // Eight bytes at a time while none of them ends the string, escapes, or is a
            // control byte: a relayed payload is mostly one long string.
            while let Some(chunk) = buf.get(i..i + 8) {
                let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
                match first_special(word) {
                    None => i += 8,
                    Some(k) => {
                        i += k;
                        break;
                    }
                }
            }
            let Some(&b) = buf.get(i) else {
                return Err(ScanError::Syntax);
            };
            match b {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match buf.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            let hex = buf.get(i + 2..i + 6).ok_or(ScanError::Syntax)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(ScanError::Syntax);
                            }
                            i += 6;
                        }
                        _ => return Err(ScanError::Syntax),
                    }
                }
                0x00..=0x1f => return Err(ScanError::Syntax),
                _ => i += 1,
            }
        }
        self.pos = i + 1;
        Ok(RawStr {
            span: Span { start, end: i },
            escaped,
        })
    }

    fn number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(ScanError::Syntax),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.one_or_more_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.one_or_more_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn one_or_more_digits(&mut self) -> Result<(), ScanError> {
        let start = self.pos;
        self.digits();
        if self.pos == start {
            Err(ScanError::Syntax)
        } else {
            Ok(())
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), ScanError> {
        if self.buf[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(ScanError::Syntax)
        }
    }

    /// Validates one value at `depth` (the number of containers already open) without recursion.
    pub(crate) fn value(&mut self, depth: usize) -> Result<(), ScanError> {
        // One bit per open container: 1 for an object, 0 for an array.
        let mut stack = [0u64; MAX_DEPTH.div_ceil(64)];
        let mut open = 0usize;
        loop {
            // Parse one value start.
            self.skip_ws();
            match self.peek() {
                Some(b'{') | Some(b'[') => {
                    let is_obj = self.peek() == Some(b'{');
                    if depth + open + 1 > MAX_DEPTH {
                        return Err(ScanError::TooDeep);
                    }
                    self.pos += 1;
                    self.skip_ws();
                    let close = if is_obj { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.pos += 1;
                    } else {
                        if is_obj {
                            stack[open / 64] |= 1 << (open % 64);
                            self.member_key()?;
                        } else {
                            stack[open / 64] &= !(1 << (open % 64));
                        }
                        open += 1;
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return Err(ScanError::Syntax),
            }
            // A value is complete: close containers or move to the next element.
            loop {
                if open == 0 {
                    return Ok(());
                }
                let top = open - 1;
                let is_obj = stack[top / 64] & (1 << (top % 64)) != 0;
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        if is_obj {
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(b'}') if is_obj => {
                        self.pos += 1;
                        open -= 1;
                    }
                    Some(b']') if !is_obj => {
                        self.pos += 1;
                        open -= 1;
                    }
                    _ => return Err(ScanError::Syntax),
                }
            }
        }
    }

    /// Inside a nested object: a key and its colon.
    fn member_key(&mut self) -> Result<(), ScanError> {
        self.skip_ws();
        self.string()?;
        self.skip_ws();
        self.expect(b':')
    }
}

/// Reads four hex digits (already validated by the scanner, checked again here).
fn hex4(b: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(b.get(..4)?).ok()?;
    u16::from_str_radix(s, 16).ok()
}

/// Walks the escapes of raw string contents, calling `emit` for each decoded char or raw byte
/// run. Returns `None` on a lone surrogate.
fn decode(raw: &[u8], mut emit: impl FnMut(&[u8]) -> bool) -> Option<()> {
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            let end = raw[i..]
                .iter()
                .position(|&b| b == b'\\')
                .map_or(raw.len(), |p| i + p);
            if !emit(&raw[i..end]) {
                return None;
            }
            i = end;
            continue;
        }
        let esc = *raw.get(i + 1)?;
        let single = match esc {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(c) = single {
            if !emit(&[c]) {
                return None;
            }
            i += 2;
            continue;
        }
        let hi = hex4(raw.get(i + 2..)?)?;
        i += 6;
        let cp = match hi {
            0xD800..=0xDBFF => {
                if raw.get(i) != Some(&b'\\') || raw.get(i + 1) != Some(&b'u') {
                    return None;
                }
                let lo = hex4(raw.get(i + 2..)?)?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return None;
                }
                i += 6;
                0x10000 + (((hi as u32) - 0xD800) << 10) + ((lo as u32) - 0xDC00)
            }
            0xDC00..=0xDFFF => return None,
            _ => hi as u32,
        };
        let ch = char::from_u32(cp)?;
        let mut tmp = [0u8; 4];
        if !emit(ch.encode_utf8(&mut tmp).as_bytes()) {
            return None;
        }
    }
    Some(())
}

fn check_decodes(raw: &[u8]) -> Result<(), ScanError> {
    decode(raw, |_| true).ok_or(ScanError::Syntax)
}

/// Decodes escaped string contents into a new string; `None` if they do not decode (a lone
/// surrogate).
pub fn unescape(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    decode(raw, |bytes| {
        out.extend_from_slice(bytes);
        true
    })?;
    String::from_utf8(out).ok()
}

/// Decodes escaped string contents into `out`; `None` if they do not decode or do not fit.
pub fn unescape_into<'o>(raw: &[u8], out: &'o mut [u8]) -> Option<&'o str> {
    let mut len = 0;
    decode(raw, |bytes| {
        let Some(dst) = out.get_mut(len..len + bytes.len()) else {
            return false;
        };
        dst.copy_from_slice(bytes);
        len += bytes.len();
        true
    })?;
    std::str::from_utf8(&out[..len]).ok()
}

/// The text of a scanned string, decoded into `tmp` only when it holds escapes.
pub fn text<'a>(buf: &'a [u8], s: RawStr, tmp: &'a mut [u8]) -> Option<&'a str> {
    let raw = s.span.of(buf);
    if s.escaped {
        unescape_into(raw, tmp)
    } else {
        std::str::from_utf8(raw).ok()
    }
}

/// Where the first byte of `word` (in memory order) that is `"`, `\` or below 0x20 is, if any.
/// Each test below sets the high bit of every byte it finds and may set some above it (a
/// borrow), never below: the lowest bit set is the first such byte.
fn first_special(word: u64) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero: its high bit in `(x - 1) & !x`; below `n`: in `(x - n) & !x`.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let quote = zero(word ^ (ONES * u64::from(b'"')));
    let backslash = zero(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    let found = quote | backslash | control;
    (found != 0).then(|| found.trailing_zeros() as usize / 8)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_special_byte_of_a_word_is_found() {
        let special = |b: u8| b == b'"' || b == b'\\' || b < 0x20;
        let first = |w: [u8; 8]| w.iter().position(|&b| special(b));
        for filler in [b'a', 0x7f, 0x80, 0xff, b' ', b'!'] {
            for pos in 0..8 {
                for b in 0..=255u8 {
                    let mut w = [filler; 8];
                    w[pos] = b;
                    let word = u64::from_le_bytes(w);
                    assert_eq!(super::first_special(word), first(w), "{w:?}");
                }
            }
        }
        // Pseudo-random words against the definition, including several special bytes.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            assert_eq!(super::first_special(x), first(bytes), "{bytes:?}");
        }
    }

    use super::*;

    fn ok(s: &str) -> Header {
        scan(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    fn err(s: &str) -> ScanError {
        scan(s.as_bytes()).expect_err(s)
    }

    #[test]
    fn finds_routing_fields_in_any_order() {
        let d = r#" {"payload": {"a":[1,2,{"b":null}]}, "source":"A", "x":1.5e3, "target":"B", "type":"relay"} "#;
        let h = ok(d);
        assert_eq!(h.ty.span.of(d.as_bytes()), b"relay");
        assert_eq!(h.target.unwrap().span.of(d.as_bytes()), b"B");
        assert_eq!(h.source.unwrap().span.of(d.as_bytes()), b"A");
        assert_eq!(
            h.payload.unwrap().of(d.as_bytes()),
            br#"{"a":[1,2,{"b":null}]}"#
        );
    }

    #[test]
    fn payload_string_span_keeps_escapes() {
        let d = r#"{"type":"relay","payload":"{\"k\": \"caf\u00e9 ☕\"}\n"}"#;
        let h = ok(d);
        assert_eq!(
            h.payload.unwrap().of(d.as_bytes()),
            r#""{\"k\": \"caf\u00e9 ☕\"}\n""#.as_bytes()
        );
    }

    #[test]
    fn escaped_keys_count_as_routing_fields() {
        assert_eq!(
            err(r#"{"type":"relay","\u0074ype":"relay"}"#),
            ScanError::Duplicate
        );
        let d = r#"{"\u0074ype":"rel\u0061y"}"#;
        let h = ok(d);
        let mut tmp = [0u8; 16];
        assert_eq!(text(d.as_bytes(), h.ty, &mut tmp), Some("relay"));
    }

    #[test]
    fn refuses_bad_documents() {
        assert_eq!(err(""), ScanError::Syntax);
        assert_eq!(err("[]"), ScanError::Syntax);
        assert_eq!(err(r#"{"type":"relay""#), ScanError::Syntax);
        assert_eq!(err(r#"{"type":"relay"} x"#), ScanError::Syntax);
        assert_eq!(err(r#"{"type":"relay",}"#), ScanError::Syntax);
        assert_eq!(err(r#"{"type":"a","payload":01}"#), ScanError::Syntax);
        assert_eq!(err(r#"{"type":"a","payload":"\x"}"#), ScanError::Syntax);
        assert_eq!(err("{\"type\":\"a\u{1}\"}"), ScanError::Syntax);
        assert_eq!(err(r#"{"type":1}"#), ScanError::WrongType);
        assert_eq!(err(r#"{"type":"a","target":null}"#), ScanError::WrongType);
        assert_eq!(err(r#"{"payload":1}"#), ScanError::MissingType);
        assert_eq!(err(r#"{}"#), ScanError::MissingType);
        assert_eq!(
            err(r#"{"type":"a","payload":1,"payload":2}"#),
            ScanError::Duplicate
        );
        assert_eq!(err(r#"{"type":"\ud800"}"#), ScanError::Syntax);
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        let deep = |n: usize| {
            format!(
                r#"{{"type":"a","payload":{}{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        assert!(scan(deep(MAX_DEPTH - 1).as_bytes()).is_ok());
        assert_eq!(err(&deep(MAX_DEPTH)), ScanError::TooDeep);
        assert_eq!(err(&deep(100_000)), ScanError::TooDeep);
    }

    #[test]
    fn unescape_respects_buffer_and_surrogates() {
        let mut tmp = [0u8; 8];
        assert_eq!(unescape_into(br"\ud83d\ude00", &mut tmp), Some("😀"));
        assert_eq!(unescape_into(br"\ude00", &mut tmp), None);
        assert_eq!(unescape_into(b"123456789", &mut tmp), None);
        assert_eq!(
            unescape(br"a\u00e9\ud83d\ude00\n\/").as_deref(),
            Some("aé😀\n/")
        );
        assert_eq!(unescape(br"\udc00"), None);
    }
}
