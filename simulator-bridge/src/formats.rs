//! Stim's result formats, read and written byte for byte as Stim does.
//!
//! Six formats (<https://github.com/quantumlib/Stim/blob/main/doc/result_formats.md>)
//! carry the same thing, a list of shots of a fixed number of bits each:
//!
//! | format  | layout |
//! |---------|--------|
//! | `01`    | one line per shot of `0`/`1` characters |
//! | `b8`    | the bit-packed rows of [`PackedShots`], nothing else |
//! | `r8`    | per shot, run lengths of zeros before each one, the row followed by an implicit one |
//! | `ptb64` | groups of 64 shots, one little-endian `u64` per bit (bit `j` = shot `j` of the group) |
//! | `hits`  | one line per shot of comma-separated indices of the set bits |
//! | `dets`  | one line per shot: `shot` then ` M<k>`, ` D<k>` or ` L<k>` per set bit |
//!
//! None of them stores the number of bits per shot, so reading takes it from
//! [`BitLabels`], which also says how `dets` names the bits.
//!
//! Writing produces exactly the bytes of Python Stim's `stim.write_shot_data_file`
//! (the fixtures under `fixtures/formats/` check this). Reading accepts what
//! `stim.read_shot_data_file` accepts, with these deliberate differences:
//!
//! * `b8` rows with padding bits set are an error (Stim ignores them), so that
//!   equal files always give equal [`PackedShots`].
//! * A bit index repeated within one `hits` or `dets` line is an error. Stim is
//!   inconsistent there (its Python reader toggles repeated `hits` indices but
//!   sets repeated `dets` ones, and some of its C++ paths do the opposite), so
//!   the data is ambiguous. Stim never writes repeats.
//! * Non-empty `b8` or `ptb64` data for shots of 0 bits is an error (Stim
//!   silently reads it as no shots).
//! * A `\r` anywhere but directly before a `\n` is an error. Stim's `hits`
//!   and `dets` readers also skip one before a `,` or a space (`3\r,4`).
//!
//! Quirks of Stim that are kept: a `\r` directly before a `\n` is ignored in
//! the text formats; `01` and `hits` need a newline after every shot while
//! `dets` does not, and `dets` skips blank lines and leading spaces and tabs;
//! indices may have leading zeros (`D007`); shots of 0 bits are empty lines
//! in `01` and `hits`, `shot` lines in `dets`, one zero byte in `r8`, and
//! nothing at all in `b8` and `ptb64`, which therefore read back as 0 shots.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use crate::error::BridgeError;
use crate::fsutil::{read_file, write_atomically};
use crate::shots::{PackedShots, bytes_for};

/// Stim's result formats (<https://github.com/quantumlib/Stim/blob/main/doc/result_formats.md>).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResultFormat {
    /// `01`: one line per shot of `0`/`1` characters, each ending in `\n`.
    Zero1,
    /// `b8`: bit-packed rows, little-endian bits, rows padded to whole bytes.
    B8,
    /// `r8`: per shot, bytes counting the zeros before each one of the row
    /// followed by an implicit one; `0xFF` means 255 zeros and no one.
    R8,
    /// `ptb64`: groups of 64 shots; per bit, a little-endian `u64` whose bit `j`
    /// is that bit of shot `j` of the group.
    Ptb64,
    /// `hits`: one line per shot of comma-separated ascending indices of the set bits.
    Hits,
    /// `dets`: one line per shot, `shot` followed by ` M<k>`, ` D<k>` or ` L<k>`
    /// for each set bit, `k` counting within its label (see [`BitLabels`]).
    Dets,
}

impl ResultFormat {
    /// Every format, in the order of Stim's documentation.
    pub const ALL: [ResultFormat; 6] = [
        ResultFormat::Zero1,
        ResultFormat::B8,
        ResultFormat::R8,
        ResultFormat::Ptb64,
        ResultFormat::Hits,
        ResultFormat::Dets,
    ];

    /// Stim's name for the format (`01`, `b8`, `r8`, `ptb64`, `hits`, `dets`),
    /// which is also the usual file extension.
    pub fn name(self) -> &'static str {
        match self {
            ResultFormat::Zero1 => "01",
            ResultFormat::B8 => "b8",
            ResultFormat::R8 => "r8",
            ResultFormat::Ptb64 => "ptb64",
            ResultFormat::Hits => "hits",
            ResultFormat::Dets => "dets",
        }
    }

    /// Whether the format is line-oriented text (`01`, `hits`, `dets`).
    pub fn is_text(self) -> bool {
        matches!(self, ResultFormat::Zero1 | ResultFormat::Hits | ResultFormat::Dets)
    }
}

impl FromStr for ResultFormat {
    type Err = BridgeError;

    /// Parses Stim's name for a format; names are case-sensitive, as in Stim.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResultFormat::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            BridgeError::invalid(
                "format",
                format!("unknown result format '{s}' (expected one of 01, b8, r8, ptb64, hits, dets)"),
            )
        })
    }
}

impl fmt::Display for ResultFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the bits of a shot are labelled by the `dets` format: the first
/// `measurements` bits are `M0, M1, ...`, the next `detectors` bits are
/// `D0, D1, ...`, and the last `observables` bits are `L0, L1, ...`.
///
/// The total is the number of bits per shot, for every format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BitLabels {
    /// Number of leading measurement bits (`M<k>`).
    pub measurements: usize,
    /// Number of detector bits (`D<k>`) after the measurements.
    pub detectors: usize,
    /// Number of trailing observable bits (`L<k>`).
    pub observables: usize,
}

impl BitLabels {
    /// `n` measurement bits and nothing else.
    pub fn measurements(n: usize) -> Self {
        Self { measurements: n, ..Self::default() }
    }

    /// `n` detector bits and nothing else.
    pub fn detectors(n: usize) -> Self {
        Self { detectors: n, ..Self::default() }
    }

    /// `n` observable bits and nothing else.
    pub fn observables(n: usize) -> Self {
        Self { observables: n, ..Self::default() }
    }

    /// The same labels with `n` observable bits appended, as in
    /// `BitLabels::detectors(33).with_observables(4)`.
    pub fn with_observables(self, n: usize) -> Self {
        Self { observables: n, ..self }
    }

    /// Bits per shot.
    pub fn total(&self) -> usize {
        self.measurements + self.detectors + self.observables
    }

    /// The `dets` name of bit `bit` of a shot: its prefix and its index within
    /// that prefix's range. Bits past [`total`](Self::total) count as observables.
    pub fn label(&self, bit: usize) -> (char, usize) {
        if bit < self.measurements {
            ('M', bit)
        } else if bit < self.measurements + self.detectors {
            ('D', bit - self.measurements)
        } else {
            ('L', bit - self.measurements - self.detectors)
        }
    }

    /// The first bit and the number of bits labelled by `prefix` (`M`, `D` or `L`).
    fn range(&self, prefix: u8) -> Option<(usize, usize)> {
        match prefix {
            b'M' => Some((0, self.measurements)),
            b'D' => Some((self.measurements, self.detectors)),
            b'L' => Some((self.measurements + self.detectors, self.observables)),
            _ => None,
        }
    }
}

impl fmt::Display for BitLabels {
    /// Writes e.g. `37 bits (0 M + 33 D + 4 L)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bits ({} M + {} D + {} L)", self.total(), self.measurements, self.detectors, self.observables)
    }
}

/// What I/O errors of [`write_shots`] name in place of a path.
const STREAM: &str = "<output stream>";

/// Text output is gathered into chunks of about this many bytes before being
/// handed to the writer, so that unbuffered writers stay fast.
const CHUNK: usize = 1 << 16;

/// Writes `shots` to `w` in `format`, byte for byte as `stim.write_shot_data_file`.
///
/// `labels` must cover exactly the bits of a shot (they name the bits of `dets`
/// and are checked for every format). `ptb64` needs a multiple of 64 shots.
/// Shots of 0 bits write nothing in `b8` and `ptb64`, as in Stim. Parameter
/// errors are found before anything is written; I/O errors name `<output stream>`.
pub fn write_shots(
    w: &mut impl Write,
    shots: &PackedShots,
    format: ResultFormat,
    labels: BitLabels,
) -> Result<(), BridgeError> {
    check_writable(shots, format, labels)?;
    encode(w, shots, format, labels).map_err(|e| BridgeError::io(STREAM, e))
}

/// Reads shots of `labels.total()` bits each from `data` in `format`, accepting
/// what `stim.read_shot_data_file` accepts (see the module documentation for
/// the few deliberate differences). Errors say which shot and line is wrong.
pub fn read_shots(data: &[u8], format: ResultFormat, labels: BitLabels) -> Result<PackedShots, BridgeError> {
    let bits = labels.total();
    match format {
        ResultFormat::Zero1 => read_01(data, bits),
        ResultFormat::B8 => read_b8(data, bits),
        ResultFormat::R8 => read_r8(data, bits),
        ResultFormat::Ptb64 => read_ptb64(data, bits),
        ResultFormat::Hits => read_hits(data, bits),
        ResultFormat::Dets => read_dets(data, labels),
    }
}

/// Writes `shots` to the file `path` as [`write_shots`] does, through a
/// temporary file renamed into place, so that a failure leaves no partial file.
pub fn write_shots_file(
    path: &Path,
    shots: &PackedShots,
    format: ResultFormat,
    labels: BitLabels,
) -> Result<(), BridgeError> {
    check_writable(shots, format, labels)?;
    write_atomically(path, |w| encode(w, shots, format, labels).map_err(|e| BridgeError::io(path, e)))
}

/// Reads the file `path` as [`read_shots`] does; errors name the path.
pub fn read_shots_file(path: &Path, format: ResultFormat, labels: BitLabels) -> Result<PackedShots, BridgeError> {
    let data = read_file(path)?;
    read_shots(&data, format, labels).map_err(|e| match e {
        BridgeError::Format(msg) => BridgeError::Format(format!("{}: {msg}", path.display())),
        other => other,
    })
}

// ---------------------------------------------------------------------------
// Writing

fn check_writable(shots: &PackedShots, format: ResultFormat, labels: BitLabels) -> Result<(), BridgeError> {
    if labels.total() != shots.bits_per_shot() {
        return Err(BridgeError::invalid(
            "labels",
            format!("the labels cover {labels} but the shots have {} bits", shots.bits_per_shot()),
        ));
    }
    if format == ResultFormat::Ptb64 && !shots.num_shots().is_multiple_of(64) {
        return Err(BridgeError::invalid(
            "shots",
            format!("ptb64 needs a multiple of 64 shots, got {}", shots.num_shots()),
        ));
    }
    Ok(())
}

/// Writes already checked shots.
fn encode(w: &mut impl Write, shots: &PackedShots, format: ResultFormat, labels: BitLabels) -> std::io::Result<()> {
    match format {
        ResultFormat::B8 => w.write_all(shots.as_bytes()),
        ResultFormat::Ptb64 => write_ptb64(w, shots),
        _ => {
            let mut buf = Vec::with_capacity(CHUNK + 1024);
            for s in 0..shots.num_shots() {
                let row = shots.row(s);
                match format {
                    ResultFormat::Zero1 => encode_01_row(&mut buf, row, shots.bits_per_shot()),
                    ResultFormat::R8 => encode_r8_row(&mut buf, row, shots.bits_per_shot()),
                    ResultFormat::Hits => encode_hits_row(&mut buf, row),
                    ResultFormat::Dets => encode_dets_row(&mut buf, row, labels),
                    ResultFormat::B8 | ResultFormat::Ptb64 => unreachable!("handled above"),
                }
                if buf.len() >= CHUNK {
                    w.write_all(&buf)?;
                    buf.clear();
                }
            }
            w.write_all(&buf)
        }
    }
}

/// `ZERO1_CHARS[b]` is byte `b` as eight `0`/`1` characters, least significant bit first.
const ZERO1_CHARS: [[u8; 8]; 256] = {
    let mut table = [[b'0'; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut k = 0;
        while k < 8 {
            table[b][k] = b'0' + ((b >> k) & 1) as u8;
            k += 1;
        }
        b += 1;
    }
    table
};

fn encode_01_row(buf: &mut Vec<u8>, row: &[u8], bits: usize) {
    let (full, tail) = row.split_at(bits / 8);
    for &byte in full {
        buf.extend_from_slice(&ZERO1_CHARS[byte as usize]);
    }
    if let Some(&last) = tail.first() {
        buf.extend_from_slice(&ZERO1_CHARS[last as usize][..bits % 8]);
    }
    buf.push(b'\n');
}

/// Appends the zero run `run` as r8 bytes: a `0xFF` per 255 zeros, then the rest.
fn push_r8_run(buf: &mut Vec<u8>, mut run: usize) {
    while run >= 255 {
        buf.push(0xFF);
        run -= 255;
    }
    buf.push(run as u8);
}

fn encode_r8_row(buf: &mut Vec<u8>, row: &[u8], bits: usize) {
    let mut next = 0;
    for_each_set_bit(row, |k| {
        push_r8_run(buf, k - next);
        next = k + 1;
    });
    // The implicit one after the last bit.
    push_r8_run(buf, bits - next);
}

fn encode_hits_row(buf: &mut Vec<u8>, row: &[u8]) {
    let mut first = true;
    for_each_set_bit(row, |k| {
        if !first {
            buf.push(b',');
        }
        first = false;
        push_decimal(buf, k);
    });
    buf.push(b'\n');
}

fn encode_dets_row(buf: &mut Vec<u8>, row: &[u8], labels: BitLabels) {
    buf.extend_from_slice(b"shot");
    for_each_set_bit(row, |k| {
        let (prefix, index) = labels.label(k);
        buf.push(b' ');
        buf.push(prefix as u8);
        push_decimal(buf, index);
    });
    buf.push(b'\n');
}

fn write_ptb64(w: &mut impl Write, shots: &PackedShots) -> std::io::Result<()> {
    let bits = shots.bits_per_shot();
    let stride = shots.stride();
    let mut block = [0u64; 64];
    let mut out = Vec::with_capacity(8 * bits);
    for group in 0..shots.num_shots() / 64 {
        out.clear();
        // 64 bits at a time: gather 64 shots x 64 bits, transpose, emit one word per bit.
        for first_bit in (0..bits).step_by(64) {
            let bytes = first_bit / 8..stride.min(first_bit / 8 + 8);
            for (j, word) in block.iter_mut().enumerate() {
                let mut le = [0u8; 8];
                le[..bytes.len()].copy_from_slice(&shots.row(group * 64 + j)[bytes.clone()]);
                *word = u64::from_le_bytes(le);
            }
            transpose64(&mut block);
            for word in &block[..64.min(bits - first_bit)] {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        w.write_all(&out)?;
    }
    Ok(())
}

/// Calls `f` with the index of every set bit of `row`, ascending, skipping zero
/// words and bytes without looking at their bits.
fn for_each_set_bit(row: &[u8], mut f: impl FnMut(usize)) {
    let mut words = row.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut words {
        let mut word = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        while word != 0 {
            f(base + word.trailing_zeros() as usize);
            word &= word - 1;
        }
        base += 64;
    }
    for mut byte in words.remainder().iter().copied() {
        while byte != 0 {
            f(base + byte.trailing_zeros() as usize);
            byte &= byte - 1;
        }
        base += 8;
    }
}

/// Appends `n` in decimal.
fn push_decimal(buf: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Transposes a 64x64 bit matrix in place: bit `c` of word `r` swaps with bit `r` of word `c`.
fn transpose64(a: &mut [u64; 64]) {
    let mut width = 32;
    let mut mask: u64 = 0x0000_0000_FFFF_FFFF;
    while width != 0 {
        // Swap the high half-blocks of rows k (bit `width` of k clear) with the
        // low half-blocks of rows k + width.
        let mut k = 0;
        while k < 64 {
            let t = ((a[k] >> width) ^ a[k + width]) & mask;
            a[k] ^= t << width;
            a[k + width] ^= t;
            k = (k + width + 1) & !width;
        }
        width >>= 1;
        mask ^= mask << width;
    }
}

// ---------------------------------------------------------------------------
// Reading

fn format_error(format: ResultFormat, msg: impl fmt::Display) -> BridgeError {
    BridgeError::Format(format!("{format} data, {msg}"))
}

/// Assembles packed rows read from a file. Shots of 0 bits have no bytes, so
/// their count is passed separately.
fn finish(data: Vec<u8>, num_shots: usize, bits: usize) -> Result<PackedShots, BridgeError> {
    if bits == 0 {
        return Ok(PackedShots::zeros(num_shots, 0));
    }
    debug_assert_eq!(data.len(), num_shots * bytes_for(bits));
    PackedShots::from_bytes(data, bits)
}

/// A short, printable rendering of some bytes of a file, for error messages.
fn show(bytes: &[u8]) -> String {
    const MAX: usize = 24;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    let mut shown = format!("'{}'", text.escape_debug());
    if bytes.len() > MAX {
        shown.push_str("...");
    }
    shown
}

/// The lines of a text file, without their `\n` and without one `\r` before
/// it, numbered from 1, each with whether it ended in `\n`. An empty last
/// piece after the final `\n` is not a line.
fn text_lines(data: &[u8]) -> impl Iterator<Item = (usize, &[u8], bool)> {
    let ends_in_newline = data.last().is_none_or(|&b| b == b'\n');
    let mut pieces = data.split(|&b| b == b'\n').peekable();
    let mut number = 0;
    std::iter::from_fn(move || {
        let piece = pieces.next()?;
        let last = pieces.peek().is_none();
        if last && ends_in_newline {
            return None;
        }
        number += 1;
        let line = piece.strip_suffix(b"\r").unwrap_or(piece);
        Some((number, line, !last))
    })
}

fn read_01(data: &[u8], bits: usize) -> Result<PackedShots, BridgeError> {
    let stride = bytes_for(bits);
    let mut out = Vec::with_capacity(data.len() / (bits + 1) * stride);
    let mut shots = 0;
    for (line_no, line, terminated) in text_lines(data) {
        let err = |msg: String| format_error(ResultFormat::Zero1, format_args!("shot {shots} (line {line_no}): {msg}"));
        if line.len() != bits {
            return Err(err(format!("{} characters where {bits} were expected", line.len())));
        }
        for chunk in line.chunks(8) {
            let byte = parse_01_chunk(chunk).map_err(|col| {
                let col = (out.len() - shots * stride) * 8 + col;
                err(format!("unexpected character {} at column {} (expected 0 or 1)", show(&line[col..=col]), col + 1))
            })?;
            out.push(byte);
        }
        if !terminated {
            return Err(err("the last line has no final newline".into()));
        }
        shots += 1;
    }
    finish(out, shots, bits)
}

/// Packs up to 8 `0`/`1` characters into a byte, first character in bit 0, or
/// gives the position of the first other character.
fn parse_01_chunk(chunk: &[u8]) -> Result<u8, usize> {
    if let Ok(eight) = <[u8; 8]>::try_from(chunk) {
        // '0' and '1' are 0x30 and 0x31: after the xor every byte must be 0 or 1.
        let x = u64::from_le_bytes(eight) ^ 0x3030_3030_3030_3030;
        if x & 0xFEFE_FEFE_FEFE_FEFE == 0 {
            // Moves bit 0 of byte k to bit 56 + k (no two partial products collide).
            return Ok((x.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8);
        }
    }
    let mut byte = 0;
    for (k, &c) in chunk.iter().enumerate() {
        match c {
            b'0' => {}
            b'1' => byte |= 1 << k,
            _ => return Err(k),
        }
    }
    Ok(byte)
}

fn read_b8(data: &[u8], bits: usize) -> Result<PackedShots, BridgeError> {
    let stride = bytes_for(bits);
    if stride == 0 {
        if !data.is_empty() {
            return Err(format_error(
                ResultFormat::B8,
                format_args!("{} bytes for shots of 0 bits (which take no bytes)", data.len()),
            ));
        }
        return Ok(PackedShots::zeros(0, 0));
    }
    if !data.len().is_multiple_of(stride) {
        return Err(format_error(
            ResultFormat::B8,
            format_args!(
                "size {} bytes is not a multiple of the row width {stride} bytes ({bits} bits per shot): shot {} is truncated",
                data.len(),
                data.len() / stride
            ),
        ));
    }
    if !bits.is_multiple_of(8) {
        let padding = !((1u8 << (bits % 8)) - 1);
        if let Some(shot) = data.chunks_exact(stride).position(|row| row[stride - 1] & padding != 0) {
            return Err(format_error(
                ResultFormat::B8,
                format_args!("shot {shot}: bits set past bit {bits} (the padding of each row must be zero)"),
            ));
        }
    }
    finish(data.to_vec(), data.len() / stride, bits)
}

fn read_r8(data: &[u8], bits: usize) -> Result<PackedShots, BridgeError> {
    let stride = bytes_for(bits);
    let mut out = Vec::new();
    let mut shots = 0;
    let mut bytes = data.iter().enumerate();
    while let Some((mut offset, &first)) = bytes.next() {
        let start = offset;
        let err = |offset: usize, msg: String| {
            format_error(ResultFormat::R8, format_args!("shot {shots} (bytes {start}..={offset}): {msg}"))
        };
        out.resize(out.len() + stride, 0);
        let row = &mut out[shots * stride..];
        let mut byte = first;
        let mut pos = 0;
        loop {
            pos += byte as usize;
            if byte != 0xFF {
                if pos == bits {
                    break;
                }
                if pos > bits {
                    return Err(err(offset, format!("a run ends at bit {pos}, past the end of the {bits} bits")));
                }
                row[pos / 8] |= 1 << (pos % 8);
                pos += 1;
            } else if pos > bits {
                return Err(err(offset, format!("a run of zeros reaches bit {pos}, past the end of the {bits} bits")));
            }
            match bytes.next() {
                Some((o, &b)) => (offset, byte) = (o, b),
                None => {
                    return Err(err(offset, format!("the data ends after {pos} of the {bits} bits (shot truncated)")));
                }
            }
        }
        shots += 1;
    }
    finish(out, shots, bits)
}

fn read_ptb64(data: &[u8], bits: usize) -> Result<PackedShots, BridgeError> {
    let group_bytes = 8 * bits;
    if group_bytes == 0 {
        if !data.is_empty() {
            return Err(format_error(
                ResultFormat::Ptb64,
                format_args!("{} bytes for shots of 0 bits (which take no bytes)", data.len()),
            ));
        }
        return Ok(PackedShots::zeros(0, 0));
    }
    if !data.len().is_multiple_of(group_bytes) {
        let group = data.len() / group_bytes;
        return Err(format_error(
            ResultFormat::Ptb64,
            format_args!(
                "size {} bytes is not a multiple of {group_bytes} bytes (64 shots of {bits} bits): \
                 the group of shots {}..{} is truncated",
                data.len(),
                group * 64,
                group * 64 + 64
            ),
        ));
    }
    let stride = bytes_for(bits);
    let groups = data.len() / group_bytes;
    let mut out = vec![0u8; groups * 64 * stride];
    let mut block = [0u64; 64];
    for (group, words) in data.chunks_exact(group_bytes).enumerate() {
        for first_bit in (0..bits).step_by(64) {
            let n = 64.min(bits - first_bit);
            let le = &words[8 * first_bit..8 * (first_bit + n)];
            for (word, bytes) in block.iter_mut().zip(le.chunks_exact(8)) {
                *word = u64::from_le_bytes(bytes.try_into().expect("chunks of 8"));
            }
            block[n..].fill(0);
            transpose64(&mut block);
            let bytes = first_bit / 8..stride.min(first_bit / 8 + 8);
            for (j, word) in block.iter().enumerate() {
                let row = (group * 64 + j) * stride;
                out[row + bytes.start..row + bytes.end].copy_from_slice(&word.to_le_bytes()[..bytes.len()]);
            }
        }
    }
    finish(out, groups * 64, bits)
}

/// Parses a decimal index (digits only, leading zeros allowed, as in Stim).
fn parse_index(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &c| {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(d as usize)
    })
}

/// Sets bit `k` of a row, returning whether it was already set.
fn set_once(row: &mut [u8], k: usize) -> bool {
    let mask = 1 << (k % 8);
    let was = row[k / 8] & mask != 0;
    row[k / 8] |= mask;
    was
}

fn read_hits(data: &[u8], bits: usize) -> Result<PackedShots, BridgeError> {
    let stride = bytes_for(bits);
    let mut out = Vec::new();
    let mut shots = 0;
    for (line_no, line, terminated) in text_lines(data) {
        let err = |msg: String| format_error(ResultFormat::Hits, format_args!("shot {shots} (line {line_no}): {msg}"));
        out.resize(out.len() + stride, 0);
        let row = &mut out[shots * stride..];
        if !line.is_empty() {
            for token in line.split(|&b| b == b',') {
                let Some(k) = parse_index(token) else {
                    return Err(err(if token.is_empty() {
                        format!("{} is not a list of comma-separated bit indices", show(line))
                    } else if token.iter().all(u8::is_ascii_digit) {
                        format!("bit index {} is out of range for {bits} bits", show(token))
                    } else {
                        format!("{} is not a bit index", show(token))
                    }));
                };
                if k >= bits {
                    return Err(err(format!("bit index {k} is out of range for {bits} bits")));
                }
                if set_once(row, k) {
                    return Err(err(format!("bit index {k} appears twice")));
                }
            }
        }
        if !terminated {
            return Err(err("the last line has no final newline".into()));
        }
        shots += 1;
    }
    finish(out, shots, bits)
}

fn read_dets(data: &[u8], labels: BitLabels) -> Result<PackedShots, BridgeError> {
    let bits = labels.total();
    let stride = bytes_for(bits);
    let mut out = Vec::new();
    let mut shots = 0;
    // Unlike 01 and hits, Stim's dets reader allows a missing final newline and
    // skips blank lines and leading whitespace.
    for (line_no, line, _) in text_lines(data) {
        let start = line.iter().position(|c| !matches!(c, b' ' | b'\t' | b'\r'));
        let Some(start) = start else { continue };
        let line = &line[start..];
        let err = |msg: String| format_error(ResultFormat::Dets, format_args!("shot {shots} (line {line_no}): {msg}"));
        let Some(rest) = line.strip_prefix(b"shot") else {
            return Err(err(format!("the line starts with {} instead of 'shot'", show(line))));
        };
        out.resize(out.len() + stride, 0);
        let row = &mut out[shots * stride..];
        if !rest.is_empty() {
            let Some(rest) = rest.strip_prefix(b" ") else {
                return Err(err(format!("expected a space after 'shot', found {}", show(rest))));
            };
            for token in rest.split(|&b| b == b' ') {
                let Some((&prefix, digits)) = token.split_first() else {
                    return Err(err("tokens must be separated by single spaces, with none trailing".into()));
                };
                let Some((first, len)) = labels.range(prefix) else {
                    return Err(err(format!("unknown token {} (expected M<k>, D<k> or L<k>)", show(token))));
                };
                let Some(k) = parse_index(digits) else {
                    return Err(err(format!("unknown token {} (expected M<k>, D<k> or L<k>)", show(token))));
                };
                let name = prefix as char;
                if k >= len {
                    return Err(err(format!(
                        "{name}{k} is out of range: there are {len} {name} bits ({} M + {} D + {} L)",
                        labels.measurements, labels.detectors, labels.observables
                    )));
                }
                if set_once(row, first + k) {
                    return Err(err(format!("{name}{k} appears twice")));
                }
            }
        }
        shots += 1;
    }
    finish(out, shots, bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(shots: &PackedShots, format: ResultFormat, labels: BitLabels) -> Vec<u8> {
        let mut out = Vec::new();
        write_shots(&mut out, shots, format, labels).unwrap();
        out
    }

    fn read(data: &[u8], format: ResultFormat, labels: BitLabels) -> Result<PackedShots, String> {
        read_shots(data, format, labels).map_err(|e| e.to_string())
    }

    fn read_err(data: &[u8], format: ResultFormat, labels: BitLabels) -> String {
        match read_shots(data, format, labels) {
            Ok(shots) => panic!("{format} {:?} read as {shots:?}", String::from_utf8_lossy(data)),
            Err(e) => e.to_string(),
        }
    }

    /// Random labels summing to `bits`.
    fn split(bits: usize, a: usize, b: usize) -> BitLabels {
        let m = a % (bits + 1);
        let d = b % (bits - m + 1);
        BitLabels { measurements: m, detectors: d, observables: bits - m - d }
    }

    fn random_shots(num_shots: usize, bits: usize, density: f64, seed: u64) -> PackedShots {
        // A small xorshift generator: proptest picks the seed, this fills the bits.
        let mut state = seed | 1;
        let mut shots = PackedShots::zeros(num_shots, bits);
        for s in 0..num_shots {
            for k in 0..bits {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if (state >> 11) as f64 / (1u64 << 53) as f64 <= density {
                    shots.set(s, k, true);
                }
            }
        }
        shots
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_format_round_trips(
            num_shots in 0usize..200,
            bits in 0usize..300,
            density in prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0, 0.0f64..0.02],
            seed: u64,
            a: usize,
            b: usize,
        ) {
            let labels = split(bits, a, b);
            let shots = random_shots(num_shots, bits, density, seed);
            for format in ResultFormat::ALL {
                let shots = if format == ResultFormat::Ptb64 { shots.slice(0, num_shots / 64 * 64) } else { shots.clone() };
                let bytes = write(&shots, format, labels);
                let back = read_shots(&bytes, format, labels).unwrap();
                if bits == 0 && matches!(format, ResultFormat::B8 | ResultFormat::Ptb64) {
                    // No bytes per shot, so the count is lost, as in Stim.
                    prop_assert!(bytes.is_empty());
                    prop_assert_eq!(back, PackedShots::zeros(0, 0));
                } else {
                    prop_assert_eq!(&back, &shots, "{}", format);
                }
            }
        }

        #[test]
        fn transpose_matches_the_definition(words in proptest::array::uniform32(any::<u64>()), more in proptest::array::uniform32(any::<u64>())) {
            let mut a = [0u64; 64];
            a[..32].copy_from_slice(&words);
            a[32..].copy_from_slice(&more);
            let mut t = a;
            transpose64(&mut t);
            for (r, row) in t.iter().enumerate() {
                for (c, column) in a.iter().enumerate() {
                    prop_assert_eq!((row >> c) & 1, (column >> r) & 1);
                }
            }
        }
    }

    #[test]
    fn names_parse_and_print() {
        for format in ResultFormat::ALL {
            assert_eq!(format.name().parse::<ResultFormat>().unwrap(), format);
            assert_eq!(format.to_string(), format.name());
        }
        let err = "xyz".parse::<ResultFormat>().unwrap_err();
        assert!(matches!(err, BridgeError::InvalidParameter { what: "format", .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "invalid format: unknown result format 'xyz' (expected one of 01, b8, r8, ptb64, hits, dets)"
        );
        assert!("B8".parse::<ResultFormat>().is_err(), "names are case-sensitive, as in Stim");
    }

    #[test]
    fn small_example_matches_stim() {
        // stim.write_shot_data_file of [[1,0,0,1,0],[0,0,0,0,0],[1,1,1,1,1]], 3 D + 2 L.
        let rows = [[true, false, false, true, false], [false; 5], [true; 5]];
        let shots = PackedShots::from_rows(&rows, 5);
        let labels = BitLabels::detectors(3).with_observables(2);
        let expected: [(ResultFormat, &[u8]); 5] = [
            (ResultFormat::Zero1, b"10010\n00000\n11111\n"),
            (ResultFormat::B8, b"\x09\x00\x1f"),
            (ResultFormat::R8, b"\x00\x02\x01\x05\x00\x00\x00\x00\x00\x00"),
            (ResultFormat::Hits, b"0,3\n\n0,1,2,3,4\n"),
            (ResultFormat::Dets, b"shot D0 L0\nshot\nshot D0 D1 D2 L0 L1\n"),
        ];
        for (format, bytes) in expected {
            assert_eq!(write(&shots, format, labels), bytes, "{format}");
            assert_eq!(read(bytes, format, labels).unwrap(), shots, "{format}");
        }
        assert_eq!(
            write(&shots, ResultFormat::Dets, BitLabels::measurements(5)),
            b"shot M0 M3\nshot\nshot M0 M1 M2 M3 M4\n"
        );
    }

    #[test]
    fn r8_runs_of_255_zeros() {
        let mut shots = PackedShots::zeros(3, 300);
        shots.set(0, 255, true);
        shots.set(1, 254, true);
        let labels = BitLabels::detectors(300);
        let bytes = write(&shots, ResultFormat::R8, labels);
        assert_eq!(bytes, [0xFF, 0x00, 0x2C, 0xFE, 0x2D, 0xFF, 0x2D]);
        assert_eq!(read(&bytes, ResultFormat::R8, labels).unwrap(), shots);
        // 255 bits, all zero: 255 zeros and no one, then the implicit one.
        let zeros = PackedShots::zeros(1, 255);
        assert_eq!(write(&zeros, ResultFormat::R8, BitLabels::detectors(255)), [0xFF, 0x00]);
        let err = read_err(&[0xFF], ResultFormat::R8, BitLabels::detectors(255));
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn text_quirks_follow_stim() {
        let five = BitLabels::detectors(5);
        let one_shot = PackedShots::from_rows(&[[true, false, false, true, false]], 5);
        // \r\n line ends are accepted everywhere.
        assert_eq!(read(b"10010\r\n", ResultFormat::Zero1, five).unwrap(), one_shot);
        assert_eq!(read(b"3,0\r\n", ResultFormat::Hits, five).unwrap(), one_shot);
        assert_eq!(read(b"shot D3 D0\r\n", ResultFormat::Dets, five).unwrap(), one_shot);
        // Leading zeros, any order.
        assert_eq!(read(b"03,00\n", ResultFormat::Hits, five).unwrap(), one_shot);
        assert_eq!(read(b"shot D03 D0\n", ResultFormat::Dets, five).unwrap(), one_shot);
        // dets: no final newline needed, blank lines and indentation skipped.
        assert_eq!(read(b"\n  shot D0 D3", ResultFormat::Dets, five).unwrap(), one_shot);
        assert_eq!(read(b"shot", ResultFormat::Dets, five).unwrap(), PackedShots::zeros(1, 5));
        assert_eq!(read(b"", ResultFormat::Dets, five).unwrap(), PackedShots::zeros(0, 5));
        // 01 and hits: the final newline is required.
        assert!(read_err(b"10010", ResultFormat::Zero1, five).contains("no final newline"));
        assert!(read_err(b"10010\n1", ResultFormat::Zero1, five).contains("shot 1 (line 2)"));
        assert!(read_err(b"0,3", ResultFormat::Hits, five).contains("no final newline"));
        // 0 bits per shot.
        let none = BitLabels::default();
        assert_eq!(read(b"\n\r\n\n", ResultFormat::Zero1, none).unwrap(), PackedShots::zeros(3, 0));
        assert_eq!(read(b"\n\n", ResultFormat::Hits, none).unwrap(), PackedShots::zeros(2, 0));
        assert_eq!(read(b"\0\0", ResultFormat::R8, none).unwrap(), PackedShots::zeros(2, 0));
        assert!(read_err(b"\0", ResultFormat::B8, none).contains("0 bits"));
    }

    #[test]
    fn malformed_text_is_rejected_with_the_line() {
        let five = BitLabels::detectors(5);
        let err = read_err(b"10010\n10x10\n", ResultFormat::Zero1, five);
        assert!(err.contains("01 data, shot 1 (line 2)") && err.contains("'x' at column 3"), "{err}");
        let err = read_err(b"10010\n1001\n", ResultFormat::Zero1, five);
        assert!(err.contains("shot 1 (line 2): 4 characters where 5 were expected"), "{err}");
        let err = read_err(b"100101\n", ResultFormat::Zero1, five);
        assert!(err.contains("6 characters"), "{err}");
        let err = read_err(b"0101010101\n010101010 \n", ResultFormat::Zero1, BitLabels::detectors(10));
        assert!(err.contains("' ' at column 10"), "{err}");
        for bad in [&b"0,,3\n"[..], b"0,3,\n", b",\n", b"0, 3\n", b"+1\n", b"x\n"] {
            let err = read_err(bad, ResultFormat::Hits, five);
            assert!(err.starts_with("malformed shot data: hits data, shot 0 (line 1)"), "{err}");
        }
        assert!(read_err(b"\n5\n", ResultFormat::Hits, five).contains("shot 1 (line 2): bit index 5 is out of range"));
        assert!(read_err(b"2,2\n", ResultFormat::Hits, five).contains("appears twice"));
        assert!(read_err(b"99999999999999999999999\n", ResultFormat::Hits, five).contains("99999"));
        for bad in [
            &b"M0\n"[..],
            b"shotD0\n",
            b"shot  D0\n",
            b"shot D0 \n",
            b"shot X0\n",
            b"shot D\n",
            b"shot D-1\n",
            b"shot\tD0\n",
        ] {
            let err = read_err(bad, ResultFormat::Dets, five);
            assert!(err.starts_with("malformed shot data: dets data, shot 0 (line 1)"), "{err}");
        }
        assert!(read_err(b"shot D1 D1\n", ResultFormat::Dets, five).contains("D1 appears twice"));
    }

    #[test]
    fn dets_tokens_are_checked_against_their_ranges() {
        let labels = BitLabels::detectors(3).with_observables(2);
        let got = read(b"shot L1 D0\n", ResultFormat::Dets, labels).unwrap();
        assert_eq!(got, PackedShots::from_rows(&[[true, false, false, false, true]], 5));
        let err = read_err(b"shot D0\n\nshot L2\n", ResultFormat::Dets, labels);
        assert_eq!(
            err,
            "malformed shot data: dets data, shot 1 (line 3): L2 is out of range: \
             there are 2 L bits (0 M + 3 D + 2 L)"
        );
        let err = read_err(b"shot D3\n", ResultFormat::Dets, labels);
        assert!(err.contains("D3 is out of range"), "{err}");
        let err = read_err(b"shot M0\n", ResultFormat::Dets, labels);
        assert!(err.contains("M0 is out of range: there are 0 M bits"), "{err}");
        // All three labels at once (Python Stim cannot write this, but reads it).
        let mdl = BitLabels { measurements: 1, detectors: 3, observables: 2 };
        let got = read(b"shot M0 D1 L0\n", ResultFormat::Dets, mdl).unwrap();
        assert_eq!(got, PackedShots::from_rows(&[[true, false, true, false, true, false]], 6));
        assert_eq!(write(&got, ResultFormat::Dets, mdl), b"shot M0 D1 L0\n");
    }

    #[test]
    fn malformed_binary_is_rejected() {
        let nine = BitLabels::detectors(9);
        let err = read_err(&[0; 5], ResultFormat::B8, nine);
        assert!(err.contains("b8 data") && err.contains("size 5 bytes") && err.contains("row width 2 bytes"), "{err}");
        let err = read_err(&[0, 0, 0, 0b10], ResultFormat::B8, nine);
        assert!(err.contains("shot 1") && err.contains("padding"), "{err}");

        let five = BitLabels::detectors(5);
        let err = read_err(&[0x06], ResultFormat::R8, five);
        assert!(err.contains("r8 data, shot 0") && err.contains("past the end of the 5 bits"), "{err}");
        let err = read_err(&[0x05, 0x03, 0x02], ResultFormat::R8, five);
        assert!(err.contains("shot 1 (bytes 1..=2)") && err.contains("past the end"), "{err}");
        let err = read_err(&[0x05, 0x00, 0x02], ResultFormat::R8, five);
        assert!(err.contains("shot 1") && err.contains("truncated"), "{err}");
        let err = read_err(&[0xFF], ResultFormat::R8, five);
        assert!(err.contains("past the end"), "{err}");

        let err = read_err(&[0; 12], ResultFormat::Ptb64, BitLabels::detectors(1));
        assert!(err.contains("ptb64 data") && err.contains("size 12 bytes") && err.contains("shots 64..128"), "{err}");
    }

    #[test]
    fn bad_writes_are_refused_before_writing() {
        let shots = PackedShots::zeros(65, 3);
        let mut out = Vec::new();
        let err = write_shots(&mut out, &shots, ResultFormat::Ptb64, BitLabels::detectors(3)).unwrap_err();
        assert!(matches!(err, BridgeError::InvalidParameter { what: "shots", .. }), "{err:?}");
        assert!(err.to_string().contains("ptb64 needs a multiple of 64 shots, got 65"), "{err}");
        let err = write_shots(&mut out, &shots, ResultFormat::B8, BitLabels::detectors(4)).unwrap_err();
        assert!(err.to_string().contains("labels cover 4 bits"), "{err}");
        assert!(out.is_empty());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.ptb64");
        assert!(write_shots_file(&path, &shots, ResultFormat::Ptb64, BitLabels::detectors(3)).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn files_round_trip_and_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let labels = BitLabels::detectors(33).with_observables(4);
        let shots = random_shots(128, 37, 0.3, 7);
        for format in ResultFormat::ALL {
            let path = dir.path().join(format!("shots.{format}"));
            write_shots_file(&path, &shots, format, labels).unwrap();
            assert_eq!(read_shots_file(&path, format, labels).unwrap(), shots, "{format}");
        }
        let path = dir.path().join("shots.b8");
        let err = read_shots_file(&path, ResultFormat::B8, BitLabels::detectors(36)).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        let missing = dir.path().join("missing.01");
        let err = read_shots_file(&missing, ResultFormat::Zero1, labels).unwrap_err();
        assert!(matches!(err, BridgeError::Io { .. }) && err.to_string().contains("missing.01"), "{err}");
    }

    /// The cases of fixtures/formats/manifest.json, written by scripts/make_format_fixtures.py.
    #[test]
    fn stim_fixtures_read_and_write_byte_for_byte() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/formats"));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let cases = manifest["cases"].as_array().unwrap();
        assert!(cases.len() >= 5);
        let mut checked = 0;
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let n = |key: &str| case[key].as_u64().unwrap() as usize;
            let labels =
                BitLabels { measurements: n("measurements"), detectors: n("detectors"), observables: n("observables") };
            assert_eq!(labels.total(), n("bits"), "{name}");
            let truth = read_shots_file(&dir.join(format!("{name}.01")), ResultFormat::Zero1, labels).unwrap();
            assert_eq!((truth.num_shots(), truth.bits_per_shot()), (n("shots"), n("bits")), "{name}");
            for format in case["formats"].as_array().unwrap() {
                let format: ResultFormat = format.as_str().unwrap().parse().unwrap();
                let path = dir.join(format!("{name}.{format}"));
                let stim_bytes = std::fs::read(&path).unwrap();
                let got = read_shots(&stim_bytes, format, labels).unwrap();
                if labels.total() == 0 && matches!(format, ResultFormat::B8 | ResultFormat::Ptb64) {
                    assert_eq!(got.num_shots(), 0, "{name}.{format}");
                } else {
                    assert_eq!(got, truth, "{name}.{format}");
                }
                assert!(write(&truth, format, labels) == stim_bytes, "{name}.{format}: bytes differ from Stim's");
                checked += 1;
            }
        }
        assert!(checked >= 30, "only {checked} fixture files checked");
    }
}
