//! Whole-batch decoding (`DecodeBatch`): b8 detection events in, b8
//! predictions and confidences out, with the stream sessions' decoders and
//! calibrations.

use decoder::{Decoder, DecoderKind, NeuralDecoder, PackedShots};

use crate::Hub;
use crate::api::{BatchReply, BatchRequest, Fault};

impl Hub {
    /// Decodes a batch of whole shots with the neural decoder, matching or
    /// correlated matching.
    pub fn decode_batch(&self, req: BatchRequest) -> Result<BatchReply, Fault> {
        let code = &req.code;
        let info = self.circuit(code)?;
        let mut decoder: Box<dyn Decoder> = match req.decoder {
            DecoderKind::Neural => {
                let model = self.models.find(req.model.as_deref(), code.distance, code.basis)?;
                Box::new(NeuralDecoder::new(model.model, info.layout()).map_err(|e| Fault::invalid(e.to_string()))?)
            }
            kind @ (DecoderKind::Matching | DecoderKind::Correlated) => {
                Box::new(info.matching(kind).map_err(Fault::internal)?)
            }
            other => {
                return Err(Fault::invalid(format!("DecodeBatch takes neural, matching or correlated, not {other}")));
            }
        };
        let n = decoder.num_detectors();
        let row = n.div_ceil(8);
        if req.events_b8.len() != row * req.num_shots {
            return Err(Fault::invalid(format!(
                "{} shots of {n} detectors take {} bytes of b8, but {} came",
                req.num_shots,
                row * req.num_shots,
                req.events_b8.len()
            )));
        }
        let events = PackedShots::from_bytes(req.events_b8, n).map_err(|e| Fault::invalid(e.to_string()))?;
        let decisions = decoder.decode_batch(&events).map_err(|e| Fault::invalid(e.to_string()))?;
        Ok(BatchReply {
            num_observables: decoder.num_observables(),
            predictions_b8: decisions.predictions.into_bytes(),
            confidence: decisions.confidence,
            answered_by: req.decoder,
        })
    }
}
