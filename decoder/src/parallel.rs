//! Decoding one batch on several threads.
//!
//! PyMatching's graphs cannot cross threads, so each worker builds its own
//! decoder with `make` and decodes a contiguous slice of the shots.

use crate::{Decisions, DecodeError, Decoder, PackedShots};

/// Decodes `events` with `threads` workers (0 means one per core), each
/// running its own decoder built by `make`. The result is the same as one
/// decoder's over the whole batch.
pub fn decode_parallel<D, F>(make: F, events: &PackedShots, threads: usize) -> Result<Decisions, DecodeError>
where
    D: Decoder,
    F: Fn() -> Result<D, DecodeError> + Sync,
{
    Ok(decode_parallel_with(make, events, threads, |_| ())?.0)
}

/// [`decode_parallel`], also returning what `finish` reads from each
/// worker's decoder once it is done (the statistics it kept, say), in shot
/// order.
pub fn decode_parallel_with<D, F, G, S>(
    make: F,
    events: &PackedShots,
    threads: usize,
    finish: G,
) -> Result<(Decisions, Vec<S>), DecodeError>
where
    D: Decoder,
    F: Fn() -> Result<D, DecodeError> + Sync,
    G: Fn(&D) -> S + Sync,
    S: Send,
{
    let n = events.num_shots();
    let threads = simulator_bridge::sample::resolve_threads(threads).min(n.max(1));
    if threads <= 1 {
        let mut decoder = make()?;
        let decisions = decoder.decode_batch(events)?;
        return Ok((decisions, vec![finish(&decoder)]));
    }
    let per = n.div_ceil(threads);
    let (make, finish) = (&make, &finish);
    let parts: Vec<Result<(Decisions, S), DecodeError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (start, end) = ((t * per).min(n), ((t + 1) * per).min(n));
                let slice = events.slice(start, end);
                scope.spawn(move || {
                    let mut decoder = make()?;
                    let decisions = decoder.decode_batch(&slice)?;
                    Ok((decisions, finish(&decoder)))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("decoding thread panicked")).collect()
    });
    let mut merged: Option<Decisions> = None;
    let mut finished = Vec::with_capacity(parts.len());
    for part in parts {
        let (part, done) = part?;
        finished.push(done);
        match merged.as_mut() {
            None => merged = Some(part),
            Some(m) => {
                m.predictions.extend(&part.predictions);
                if let (Some(c), Some(more)) = (m.confidence.as_mut(), part.confidence) {
                    c.extend(more);
                }
            }
        }
    }
    Ok((merged.expect("at least one worker"), finished))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecoderKind, MatchingDecoder};
    use simulator_bridge::sample::Sampler;
    use simulator_bridge::{Basis, MemoryExperiment, NoiseModel};

    #[test]
    fn parallel_equals_serial() {
        let c = MemoryExperiment::new(5, 5, Basis::X).unwrap().noisy_circuit(&NoiseModel::Si1000 { p: 0.004 }).unwrap();
        let dem = simulator_bridge::decoding_dem(&c).unwrap().to_string();
        let shots = Sampler::new(&c).sample(5_001, 5, 0).unwrap();
        let make = || MatchingDecoder::from_dem_text(&dem, DecoderKind::Correlated);
        let serial = decode_parallel(make, &shots.detectors, 1).unwrap();
        let parallel = decode_parallel(make, &shots.detectors, 3).unwrap();
        assert_eq!(serial, parallel);
        assert_eq!(serial.predictions.num_shots(), 5_001);
    }
}
