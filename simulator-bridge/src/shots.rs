//! The hand-off type between syndrome sources and decoders: a batch of shots,
//! each a fixed-width row of bits packed little-endian into bytes, exactly as
//! Stim's `b8` format lays them out.

use crate::error::BridgeError;

/// Index of a shot inside a batch or a file.
pub type ShotId = usize;

/// A batch of shots with `bits_per_shot` bits each, bit-packed row by row.
///
/// Row `s` occupies bytes `s * stride .. (s + 1) * stride`, where
/// `stride = ceil(bits_per_shot / 8)`. Bit `k` of a row lives in byte `k / 8`
/// at bit position `k % 8` (least significant first). Padding bits past
/// `bits_per_shot` are always zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedShots {
    /// Number of shots (rows).
    num_shots: usize,
    /// Number of meaningful bits in every row.
    bits_per_shot: usize,
    /// Row-major packed bytes, `num_shots * stride` long.
    data: Vec<u8>,
}

impl PackedShots {
    /// An all-zero batch.
    pub fn zeros(num_shots: usize, bits_per_shot: usize) -> Self {
        Self { num_shots, bits_per_shot, data: vec![0; num_shots * bytes_for(bits_per_shot)] }
    }

    /// Wraps packed rows, checking the length and clearing nothing: padding bits
    /// that are set are an error, so that equal batches compare equal.
    pub fn from_bytes(data: Vec<u8>, bits_per_shot: usize) -> Result<Self, BridgeError> {
        let stride = bytes_for(bits_per_shot);
        if stride == 0 {
            if !data.is_empty() {
                return Err(BridgeError::Format(format!("{} bytes of data for shots of 0 bits", data.len())));
            }
            return Ok(Self { num_shots: 0, bits_per_shot, data });
        }
        if !data.len().is_multiple_of(stride) {
            return Err(BridgeError::Format(format!(
                "{} bytes is not a whole number of shots of {} bits ({} bytes each)",
                data.len(),
                bits_per_shot,
                stride
            )));
        }
        let shots = Self { num_shots: data.len() / stride, bits_per_shot, data };
        if let Some(shot) = shots.first_row_with_padding_set() {
            return Err(BridgeError::Format(format!(
                "shot {shot} has bits set past bit {bits_per_shot} (padding must be zero)"
            )));
        }
        Ok(shots)
    }

    /// Builds a batch from unpacked rows of 0/1 values.
    pub fn from_rows<R: AsRef<[bool]>>(rows: &[R], bits_per_shot: usize) -> Self {
        let mut shots = Self::zeros(rows.len(), bits_per_shot);
        for (s, row) in rows.iter().enumerate() {
            let row = row.as_ref();
            assert_eq!(row.len(), bits_per_shot, "row {s} has the wrong width");
            for (k, &bit) in row.iter().enumerate() {
                if bit {
                    shots.set(s, k, true);
                }
            }
        }
        shots
    }

    /// Number of shots.
    pub fn num_shots(&self) -> usize {
        self.num_shots
    }

    /// Bits per shot.
    pub fn bits_per_shot(&self) -> usize {
        self.bits_per_shot
    }

    /// Bytes per packed row.
    pub fn stride(&self) -> usize {
        bytes_for(self.bits_per_shot)
    }

    /// All packed bytes, row-major.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// Consumes the batch, returning its packed bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// The packed bytes of one shot.
    pub fn row(&self, shot: ShotId) -> &[u8] {
        let stride = self.stride();
        &self.data[shot * stride..(shot + 1) * stride]
    }

    /// Mutable packed bytes of one shot.
    pub fn row_mut(&mut self, shot: ShotId) -> &mut [u8] {
        let stride = self.stride();
        &mut self.data[shot * stride..(shot + 1) * stride]
    }

    /// One bit.
    pub fn get(&self, shot: ShotId, bit: usize) -> bool {
        debug_assert!(bit < self.bits_per_shot);
        packed_bit(self.row(shot), bit)
    }

    /// Sets one bit.
    pub fn set(&mut self, shot: ShotId, bit: usize, value: bool) {
        assert!(bit < self.bits_per_shot, "bit {bit} out of range {}", self.bits_per_shot);
        let byte = &mut self.row_mut(shot)[bit / 8];
        if value {
            *byte |= 1 << (bit % 8);
        } else {
            *byte &= !(1 << (bit % 8));
        }
    }

    /// Indices of the set bits of one shot, ascending.
    pub fn hits(&self, shot: ShotId) -> impl Iterator<Item = usize> + '_ {
        let bits = self.bits_per_shot;
        self.row(shot).iter().enumerate().flat_map(move |(i, &byte)| {
            (0..8).filter(move |b| byte >> b & 1 == 1).map(move |b| i * 8 + b).filter(move |&k| k < bits)
        })
    }

    /// A copy of shots `start..end`.
    pub fn slice(&self, start: ShotId, end: ShotId) -> Self {
        let stride = self.stride();
        Self {
            num_shots: end - start,
            bits_per_shot: self.bits_per_shot,
            data: self.data[start * stride..end * stride].to_vec(),
        }
    }

    /// Appends the shots of `other`, which must have the same width.
    pub fn extend(&mut self, other: &PackedShots) {
        assert_eq!(self.bits_per_shot, other.bits_per_shot, "shot widths differ");
        self.num_shots += other.num_shots;
        self.data.extend_from_slice(&other.data);
    }

    /// Concatenates batches of equal width.
    pub fn concat(parts: &[PackedShots], bits_per_shot: usize) -> Self {
        let mut all = Self::zeros(0, bits_per_shot);
        for part in parts {
            all.extend(part);
        }
        all
    }

    /// Number of shots whose rows differ between `self` and `other`.
    pub fn count_row_mismatches(&self, other: &PackedShots) -> usize {
        assert_eq!(self.num_shots, other.num_shots, "shot counts differ");
        assert_eq!(self.bits_per_shot, other.bits_per_shot, "shot widths differ");
        (0..self.num_shots).filter(|&s| self.row(s) != other.row(s)).count()
    }

    fn first_row_with_padding_set(&self) -> Option<ShotId> {
        let used = self.bits_per_shot % 8;
        if used == 0 {
            return None;
        }
        let mask = !((1u8 << used) - 1);
        let stride = self.stride();
        (0..self.num_shots).find(|&s| self.data[s * stride + stride - 1] & mask != 0)
    }
}

/// Bytes needed to pack `bits` bits.
pub fn bytes_for(bits: usize) -> usize {
    bits.div_ceil(8)
}

/// Packs bits LSB-first (bit `k` is bit `k % 8` of byte `k / 8`, Stim's b8
/// order), padding bits 0.
pub fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bytes_for(bits.len())];
    for (k, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
        out[k / 8] |= 1 << (k % 8);
    }
    out
}

/// Bits `0..n` of LSB-first packed bytes ([`pack_bits`]'s inverse).
///
/// # Panics
/// If `packed` holds fewer than `n` bits.
pub fn unpack_bits(packed: &[u8], n: usize) -> Vec<bool> {
    (0..n).map(|k| packed_bit(packed, k)).collect()
}

/// Bit `k` of LSB-first packed bytes.
///
/// # Panics
/// If `packed` holds fewer than `k + 1` bits.
pub fn packed_bit(packed: &[u8], k: usize) -> bool {
    packed[k / 8] >> (k % 8) & 1 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_bits_is_b8_order_and_unpack_inverts_it() {
        let bits = [true, false, false, true, false, false, false, false, false, true];
        assert_eq!(pack_bits(&bits), vec![0b0000_1001, 0b0000_0010]);
        assert_eq!(unpack_bits(&pack_bits(&bits), bits.len()), bits);
        assert!(pack_bits(&[]).is_empty());
    }

    #[test]
    fn bits_round_trip_through_rows() {
        let rows = vec![vec![true, false, false, true, false, false, false, false, true], vec![false; 9]];
        let shots = PackedShots::from_rows(&rows, 9);
        assert_eq!(shots.stride(), 2);
        assert_eq!(shots.as_bytes(), &[0b0000_1001, 0b1, 0, 0]);
        assert_eq!(shots.hits(0).collect::<Vec<_>>(), vec![0, 3, 8]);
        assert_eq!(shots.hits(1).count(), 0);
    }

    #[test]
    fn ragged_and_padded_bytes_are_rejected() {
        let err = PackedShots::from_bytes(vec![0; 5], 9).unwrap_err();
        assert!(err.to_string().contains("not a whole number of shots"), "{err}");
        let err = PackedShots::from_bytes(vec![0, 0b10], 9).unwrap_err();
        assert!(err.to_string().contains("padding"), "{err}");
        assert_eq!(PackedShots::from_bytes(vec![0, 1, 0, 0], 9).unwrap().num_shots(), 2);
    }
}
