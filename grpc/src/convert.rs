//! Protobuf messages to the service's types and back. Defaults follow the
//! proto's comments: an empty noise model is SI1000, p = 0 is 0.003, zero
//! budgets and backlogs are the server's own.

use std::time::Duration;

use decoder::DecoderKind;
use qecd_service::api::{
    BatchReply, BatchRequest, CodeSpec, Fault, Input, ModelSummary, OpenRequest, Opened, Reply, RoundEvents,
    SessionDecoder, Status,
};
use simulator_bridge::Basis;
use simulator_bridge::layout::StabilizerType;
use simulator_bridge::shots::pack_bits;
use tonic::Code;

use crate::proto::{self, DecodeResponse, decode_request::Message as In, decode_response::Message as Out};

/// The gRPC status of a fault.
pub fn status(fault: Fault) -> tonic::Status {
    tonic::Status::new(code(fault.status), fault.message)
}

/// The gRPC code of a service status.
pub fn code(status: Status) -> Code {
    match status {
        Status::InvalidArgument => Code::InvalidArgument,
        Status::NotFound => Code::NotFound,
        Status::FailedPrecondition => Code::FailedPrecondition,
        Status::ResourceExhausted => Code::ResourceExhausted,
        Status::Internal => Code::Internal,
        Status::DeadlineExceeded => Code::DeadlineExceeded,
        Status::Unavailable => Code::Unavailable,
    }
}

/// A proto `Code`.
pub fn code_spec(code: Option<&proto::Code>) -> Result<CodeSpec, Fault> {
    let code = code.ok_or_else(|| Fault::invalid("`code` is missing"))?;
    let basis = match proto::Basis::try_from(code.basis) {
        Ok(proto::Basis::X) => Basis::X,
        Ok(proto::Basis::Z) => Basis::Z,
        _ => return Err(Fault::invalid("code.basis must be BASIS_X or BASIS_Z")),
    };
    let noise = (!code.noise.is_empty()).then_some(code.noise.as_str());
    let p = (code.p != 0.0).then_some(code.p);
    CodeSpec::new(code.distance as usize, basis, code.rounds as usize, noise, p)
}

/// A proto `OpenSession`.
pub fn open_request(open: proto::OpenSession) -> Result<OpenRequest, Fault> {
    let code = code_spec(open.code.as_ref()).map_err(|f| f.context("open"))?;
    let decoder = match proto::DecoderKind::try_from(open.decoder) {
        Ok(proto::DecoderKind::Neural) => SessionDecoder::Neural,
        Ok(proto::DecoderKind::NeuralChecked) => SessionDecoder::NeuralChecked,
        Ok(proto::DecoderKind::Matching) => SessionDecoder::Matching,
        Ok(proto::DecoderKind::Correlated) => SessionDecoder::Correlated,
        Ok(proto::DecoderKind::NeuralMatching) => SessionDecoder::NeuralMatching,
        _ => {
            return Err(Fault::invalid(format!(
                "decoder {} is not one of neural, matching, correlated, neural_checked, neural_matching",
                open.decoder
            )));
        }
    };
    Ok(OpenRequest {
        code,
        decoder,
        model: (!open.model.is_empty()).then_some(open.model),
        round_budget: (open.round_budget_us > 0).then(|| Duration::from_micros(u64::from(open.round_budget_us))),
        max_backlog: (open.max_backlog > 0).then_some(open.max_backlog as usize),
    })
}

/// A message of an open stream.
pub fn input(message: Option<In>) -> Input {
    match message {
        Some(In::Open(_)) => Input::Open,
        Some(In::Round(r)) => Input::Round {
            round: r.round,
            events: RoundEvents { shot: r.shot, num_events: r.num_events as usize, events: r.events },
        },
        Some(In::Final(f)) => {
            Input::Final(RoundEvents { shot: f.shot, num_events: f.num_events as usize, events: f.events })
        }
        None => Input::Invalid("a DecodeRequest with no message (open, round or final)".into()),
    }
}

/// The proto name of a decoder kind.
pub fn decoder_kind(kind: DecoderKind) -> proto::DecoderKind {
    match kind {
        DecoderKind::Neural => proto::DecoderKind::Neural,
        DecoderKind::Matching => proto::DecoderKind::Matching,
        DecoderKind::Correlated => proto::DecoderKind::Correlated,
        DecoderKind::NeuralMatching => proto::DecoderKind::NeuralMatching,
        // The service does not run belief-matching, so nothing it answers comes from it.
        DecoderKind::Belief => proto::DecoderKind::Unspecified,
    }
}

/// The proto name of a basis.
pub fn basis(basis: Basis) -> proto::Basis {
    match basis {
        Basis::X => proto::Basis::X,
        Basis::Z => proto::Basis::Z,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A stream's reply.
pub fn response(reply: Reply) -> DecodeResponse {
    let message = match reply {
        Reply::Opened(o) => Out::Opened(opened(&o)),
        Reply::Ack(a) => Out::Ack(proto::RoundAck {
            shot: a.shot,
            round: a.round,
            step_latency_ns: nanos(a.step_latency),
            budget_met: a.budget_met,
            backlog: a.backlog as u32,
        }),
        Reply::Result(r) => Out::Result(proto::ShotResult {
            shot: r.shot,
            num_observables: r.prediction.len() as u32,
            prediction: pack_bits(&r.prediction),
            confidence: r.confidence,
            answered_by: decoder_kind(r.answered_by) as i32,
            fell_back: r.fallback.is_some(),
            fallback_reason: r.fallback.unwrap_or_default(),
            decision_latency_ns: nanos(r.decision_latency),
            model_version: r.model_version.as_deref().unwrap_or_default().to_string(),
        }),
        Reply::Check(c) => Out::Check(proto::BaselineCheck {
            shot: c.shot,
            agreed: c.agreed,
            baseline_prediction: pack_bits(&c.baseline),
        }),
        Reply::Failed(f) => {
            Out::Failed(proto::ShotFailed { shot: f.shot, code: code(f.status) as u32, message: f.message })
        }
    };
    DecodeResponse { message: Some(message) }
}

fn opened(o: &Opened) -> proto::SessionOpened {
    let memory = StabilizerType::of_memory(o.basis);
    proto::SessionOpened {
        model: o.model.clone().unwrap_or_default(),
        model_version: o.model_version.as_deref().unwrap_or_default().to_string(),
        dem_sha256: o.dem_sha256.clone().unwrap_or_default(),
        first_round_events: o.first_round_events as u32,
        round_events: o.round_events as u32,
        final_round_events: o.final_round_events as u32,
        stabilizer_x: o.stabilizers.iter().map(|s| s.x).collect(),
        stabilizer_y: o.stabilizers.iter().map(|s| s.y).collect(),
        stabilizer_is_memory_basis: o.stabilizers.iter().map(|s| s.kind == memory).collect(),
    }
}

/// A served model, as `ListModels` describes it.
pub fn model_info(m: ModelSummary) -> proto::ModelInfo {
    proto::ModelInfo {
        name: m.name,
        distance: m.distance as u32,
        basis: basis(m.basis) as i32,
        noise: m.noise,
        p: m.p,
        rounds_trained: m.rounds_trained,
        width: m.width as u32,
        layers: m.layers as u32,
        temperature: m.temperature,
        version: m.version,
        sha256: m.sha256,
    }
}

/// A `DecodeBatchRequest`.
pub fn batch_request(req: proto::DecodeBatchRequest) -> Result<BatchRequest, Fault> {
    let code = code_spec(req.code.as_ref())?;
    let decoder = match proto::DecoderKind::try_from(req.decoder) {
        Ok(proto::DecoderKind::Neural) => DecoderKind::Neural,
        Ok(proto::DecoderKind::Matching) => DecoderKind::Matching,
        Ok(proto::DecoderKind::Correlated) => DecoderKind::Correlated,
        _ => return Err(Fault::invalid("DecodeBatch takes neural, matching or correlated")),
    };
    Ok(BatchRequest {
        code,
        decoder,
        model: (!req.model.is_empty()).then_some(req.model),
        num_shots: req.num_shots as usize,
        events_b8: req.detection_events_b8,
    })
}

/// A batch's answers.
pub fn batch_response(reply: BatchReply) -> proto::DecodeBatchResponse {
    proto::DecodeBatchResponse {
        num_observables: reply.num_observables as u32,
        predictions_b8: reply.predictions_b8,
        confidence: reply.confidence.unwrap_or_default(),
        answered_by: decoder_kind(reply.answered_by) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_their_grpc_codes() {
        for (status, want) in [
            (Status::InvalidArgument, Code::InvalidArgument),
            (Status::NotFound, Code::NotFound),
            (Status::FailedPrecondition, Code::FailedPrecondition),
            (Status::ResourceExhausted, Code::ResourceExhausted),
            (Status::Internal, Code::Internal),
            (Status::DeadlineExceeded, Code::DeadlineExceeded),
            (Status::Unavailable, Code::Unavailable),
        ] {
            assert_eq!(code(status), want);
        }
    }

    #[test]
    fn an_open_gets_the_documented_defaults_and_refuses_bad_codes() {
        let code = proto::Code { distance: 3, basis: proto::Basis::Z as i32, rounds: 2, noise: String::new(), p: 0.0 };
        let open = proto::OpenSession {
            code: Some(code.clone()),
            decoder: proto::DecoderKind::Correlated as i32,
            ..Default::default()
        };
        let req = open_request(open).unwrap();
        assert_eq!((req.code.noise.name(), req.code.noise.p()), ("si1000".to_string(), 0.003));
        assert_eq!((req.model, req.round_budget, req.max_backlog), (None, None, None));
        let bad_basis =
            proto::OpenSession { code: Some(proto::Code { basis: 0, ..code.clone() }), ..Default::default() };
        assert!(open_request(bad_basis).unwrap_err().message.contains("BASIS_X or BASIS_Z"));
        let no_rounds = proto::OpenSession {
            code: Some(proto::Code { rounds: 0, ..code }),
            decoder: proto::DecoderKind::Matching as i32,
            ..Default::default()
        };
        assert!(open_request(no_rounds).unwrap_err().message.contains("at least 1"));
    }
}
