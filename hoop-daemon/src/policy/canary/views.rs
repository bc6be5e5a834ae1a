//! Decoded views of a buffer: what a string unescaper (JSON, JavaScript)
//! or a URL decoder would make of it. Fixed needles can't cover every mix
//! of escaped and plain characters, so the canary decodes instead and
//! looks for the plain secret; each decoded byte remembers where its
//! encoding starts in the source, so a hit masks exactly the source bytes
//! that would decode back to the secret.
use memchr::{memchr, memchr2};

/// Most source bytes one token of a decoder reads: a UTF-16 surrogate pair
/// `\uD83D\uDE00` (12), and `%XX` (3).
const UNESCAPE_TOKEN: usize = 12;
const PERCENT_TOKEN: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Decoder {
    /// Backslash escapes: JSON's (`\/`, `\"`, `\uXXXX` with surrogate
    /// pairs), JavaScript's (`\xXX`, `\u{X…}`, `\'`, any `\<punct>`).
    Unescape,
    /// `%XX` in either case, and `+` for space.
    Percent,
}

/// A decoding of a source buffer, possibly through another view.
pub struct View {
    pub bytes: Vec<u8>,
    /// For each decoded byte, where the token that produced it starts in
    /// the source. Nondecreasing; the bytes of one multi-byte character
    /// share a start. Tokens tile the source, so a token ends where the
    /// next one starts.
    pub starts: Vec<u32>,
    /// `+` and space folded to space: a form decoder reads `+` as space,
    /// an RFC 3986 one as `+`; matched against needles folded the same way.
    pub folded: bool,
    /// Most source bytes one decoded token spans.
    reach: usize,
    /// A token starting at least this far before the end of the source is
    /// read as it would be with more data after it (its encoding, and that
    /// of every layer beneath it, is whole).
    pub margin: usize,
}

impl View {
    /// The source span of decoded bytes `a..b` (`b > a`): from the start of
    /// the first one's token to the end of the last one's.
    pub fn source(&self, a: usize, b: usize, src_len: usize) -> (usize, usize) {
        let last = self.starts[b - 1];
        let end = self.starts[b..]
            .iter()
            .find(|&&s| s != last)
            .map_or(src_len, |&s| s as usize);
        (self.starts[a] as usize, end)
    }

    /// Blanks the decoded bytes whose tokens start in source `s..e` (that
    /// span was just masked), so views decoded from this one later don't
    /// find the same occurrence again.
    pub fn blank(&mut self, s: usize, e: usize) {
        let i = self.starts.partition_point(|&x| (x as usize) < s);
        let j = self.starts.partition_point(|&x| (x as usize) < e);
        self.bytes[i..j].fill(b'*');
    }
}

impl Decoder {
    fn step(self, s: &[u8]) -> Option<(usize, Out)> {
        match self {
            Decoder::Unescape => backslash(s),
            Decoder::Percent => percent(s),
        }
    }

    fn token(self) -> usize {
        match self {
            Decoder::Unescape => UNESCAPE_TOKEN,
            Decoder::Percent => PERCENT_TOKEN,
        }
    }

    fn starts_escape(self, b: u8) -> bool {
        match self {
            Decoder::Unescape => b == b'\\',
            Decoder::Percent => b == b'%' || b == b'+',
        }
    }

    /// Where the next byte that may start an escape is. In escaped text
    /// escapes come a few bytes apart: a short look first spares memchr's
    /// setup there, and long plain runs still go to memchr.
    fn next(self, s: &[u8]) -> Option<usize> {
        const LOOK: usize = 16;
        if let Some(p) = s.iter().take(LOOK).position(|&b| self.starts_escape(b)) {
            return Some(p);
        }
        let rest = s.get(LOOK..)?;
        let p = match self {
            Decoder::Unescape => memchr(b'\\', rest),
            Decoder::Percent => memchr2(b'%', b'+', rest),
        };
        p.map(|p| p + LOOK)
    }

    /// Whether `input` has anything this decoder would change that could
    /// matter; `plus` says whether a lone `+` could (only when the secret
    /// has a space).
    fn worth(self, input: &[u8], plus: bool) -> bool {
        match self {
            Decoder::Unescape => memchr(b'\\', input).is_some(),
            Decoder::Percent => {
                memchr(b'%', input).is_some() || (plus && memchr(b'+', input).is_some())
            }
        }
    }
}

/// Decodes `input` (the source itself, or `parent`'s bytes) with `d`;
/// None when the input has nothing `d` would decode, so the view would be
/// the input again.
pub fn decode(d: Decoder, input: &[u8], parent: Option<&View>, plus: bool) -> Option<View> {
    if !d.worth(input, plus) {
        return None;
    }
    let at = |i: usize| parent.map_or(i as u32, |p| p.starts[i]);
    let mut bytes = Vec::with_capacity(input.len());
    let mut starts = Vec::with_capacity(input.len());
    let mut changed = false;
    let mut i = 0;
    while i < input.len() {
        // Plain runs are copied whole: only escape bytes need a look.
        let run = d.next(&input[i..]).unwrap_or(input.len() - i);
        bytes.extend_from_slice(&input[i..i + run]);
        match parent {
            Some(p) => starts.extend_from_slice(&p.starts[i..i + run]),
            None => starts.extend((i..i + run).map(|x| x as u32)),
        }
        i += run;
        if i == input.len() {
            break;
        }
        // One token at an escape byte: how many bytes it took and what
        // they mean, or None for a literal byte.
        match d.step(&input[i..]) {
            Some((used, out)) => {
                bytes.extend_from_slice(out.as_slice());
                starts.extend(std::iter::repeat_n(at(i), out.len as usize));
                i += used;
                changed = true;
            }
            None => {
                bytes.push(input[i]);
                starts.push(at(i));
                i += 1;
            }
        }
    }
    // Nothing decoded, but the input ends in what may begin an escape (a
    // chunk cut inside `\/` or `%2F`): the view is kept, so its margin
    // holds back the bytes a hit through that escape may start in.
    let open_tail = input
        .iter()
        .rev()
        .take(d.token())
        .any(|&b| d.starts_escape(b));
    if !changed && !open_tail {
        return None;
    }
    let (reach_below, margin_below, folded_below) =
        parent.map_or((1, 0, false), |p| (p.reach, p.margin, p.folded));
    let folded = folded_below || d == Decoder::Percent;
    if folded {
        fold(&mut bytes);
    }
    let reach = d.token() * reach_below;
    Some(View {
        bytes,
        starts,
        folded,
        reach,
        margin: reach + margin_below,
    })
}

/// `+` → space, for needles and folded views alike.
pub fn fold(b: &mut [u8]) {
    for x in b {
        if *x == b'+' {
            *x = b' ';
        }
    }
}

/// Up to one character's UTF-8.
#[derive(Clone, Copy)]
pub struct Out {
    buf: [u8; 4],
    len: u8,
}

impl Out {
    fn byte(b: u8) -> Self {
        Self {
            buf: [b, 0, 0, 0],
            len: 1,
        }
    }

    fn char(c: char) -> Self {
        let mut buf = [0; 4];
        let len = c.encode_utf8(&mut buf).len() as u8;
        Self { buf, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// One backslash escape at the front of `s` (which starts with `\`):
/// bytes read and what it means, or None for a backslash read literally.
fn backslash(s: &[u8]) -> Option<(usize, Out)> {
    let c = *s.get(1)?;
    let control = |b| Some((2, Out::byte(b)));
    match c {
        b'u' => unicode(s),
        b'x' => Some((4, Out::byte(hex(s.get(2..4)?)? as u8))),
        b'b' => control(0x08),
        b'f' => control(0x0c),
        b'n' => control(b'\n'),
        b'r' => control(b'\r'),
        b't' => control(b'\t'),
        b'v' => control(0x0b),
        // Octal and unknown letters differ between languages; none of them
        // can stand for a secret's byte in a way the other views miss.
        c if c.is_ascii_alphanumeric() => None,
        // `\"`, `\\`, `\/`, `\'` and any other escaped character: itself.
        c => control(c),
    }
}

/// `\uXXXX` (a surrogate pair as one character), or `\u{X…}`.
fn unicode(s: &[u8]) -> Option<(usize, Out)> {
    if s.get(2) == Some(&b'{') {
        let digits = s[3..].iter().take(7).position(|&b| b == b'}')?;
        let c = char::from_u32(hex(&s[3..3 + digits])?)?;
        return Some((digits + 4, Out::char(c)));
    }
    let hi = hex(s.get(2..6)?)?;
    if (0xD800..0xDC00).contains(&hi) {
        // A high surrogate needs its low half; alone it has no UTF-8.
        let low = s.get(6..12).filter(|t| t.starts_with(b"\\u"))?;
        let lo = hex(&low[2..])?;
        if !(0xDC00..0xE000).contains(&lo) {
            return None;
        }
        let c = char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?;
        return Some((12, Out::char(c)));
    }
    Some((6, Out::char(char::from_u32(hi)?)))
}

fn percent(s: &[u8]) -> Option<(usize, Out)> {
    if s[0] == b'+' {
        return Some((1, Out::byte(b' ')));
    }
    Some((3, Out::byte(hex(s.get(1..3)?)? as u8)))
}

/// 1 to 6 hex digits, either case.
fn hex(d: &[u8]) -> Option<u32> {
    if d.is_empty() || d.len() > 6 {
        return None;
    }
    d.iter()
        .try_fold(0u32, |n, &b| Some(n << 4 | (b as char).to_digit(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(d: Decoder, s: &str) -> (String, Vec<u32>) {
        let v = decode(d, s.as_bytes(), None, true).expect("decodes");
        (String::from_utf8(v.bytes).unwrap(), v.starts)
    }

    #[test]
    fn backslash_escapes_decode_and_map_back_to_their_source() {
        let (s, starts) = view(Decoder::Unescape, r#"a\/b\u00E9\uD83D\uDE00\x41\u{42}\"\q"#);
        assert_eq!(s, "a/bé😀AB\"\\q");
        assert_eq!(starts, [0, 1, 3, 4, 4, 10, 10, 10, 10, 22, 26, 32, 34, 35]);
        // Lone surrogates and bad hex stay literal.
        let (s, _) = view(Decoder::Unescape, r"\uD83Dx \u12G4 \/");
        assert_eq!(s, r"\uD83Dx \u12G4 /");
        assert!(decode(Decoder::Unescape, b"no escapes", None, true).is_none());
    }

    #[test]
    fn percent_decoding_reads_either_case_and_folds_plus() {
        let (s, starts) = view(Decoder::Percent, "a%2fb%2F+c%zz");
        assert_eq!(s, "a/b/ c%zz");
        assert_eq!(starts, [0, 1, 4, 5, 8, 9, 10, 11, 12]);
        // A lone `+` is worth a view only when a needle has a space or `+`.
        assert!(decode(Decoder::Percent, b"a+b", None, false).is_none());
    }

    #[test]
    fn views_compose_and_spans_cover_whole_tokens() {
        let src = br"x\u0025\u0032F\\\/y";
        let j = decode(Decoder::Unescape, src, None, true).unwrap();
        assert_eq!(j.bytes, br"x%2F\/y");
        let jp = decode(Decoder::Percent, &j.bytes, Some(&j), true).unwrap();
        assert_eq!(jp.bytes, br"x/\/y");
        // The `/` came from `\u0025\u0032F`, 13 source bytes.
        assert_eq!(jp.source(1, 2, src.len()), (1, 14));
        let jj = decode(Decoder::Unescape, &j.bytes, Some(&j), true).unwrap();
        assert_eq!(jj.bytes, b"x%2F/y");
        assert_eq!(jj.source(4, 5, src.len()), (14, 18));
        assert_eq!(jj.margin, 12 * 12 + 12);
    }
}
