//! qecd's matching agrees bit for bit with Python PyMatching 2.4 on saved
//! shots (fixtures/golden, made by scripts/make_golden_fixtures.py).

use decoder::{Decoder, DecoderKind, MatchingDecoder, count_errors};
use simulator_bridge::formats::read_shots_file;
use simulator_bridge::{BitLabels, ResultFormat};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/golden")).join(name)
}

#[test]
fn predictions_match_python_pymatching() {
    let dem = std::fs::read_to_string(fixture("d5_si1000.dem")).unwrap();
    let actual = read_shots_file(&fixture("d5_si1000.obs.01"), ResultFormat::Zero1, BitLabels::observables(1)).unwrap();
    for kind in DecoderKind::MATCHING {
        let mut decoder = MatchingDecoder::from_dem_text(&dem, kind).unwrap();
        let labels = BitLabels::detectors(decoder.num_detectors());
        let events = read_shots_file(&fixture("d5_si1000.b8"), ResultFormat::B8, labels).unwrap();
        assert_eq!(events.num_shots(), 4096);
        let expected =
            read_shots_file(&fixture(&format!("d5_si1000.{kind}.01")), ResultFormat::Zero1, BitLabels::observables(1))
                .unwrap();
        let got = decoder.decode_batch(&events).unwrap().predictions;
        assert_eq!(count_errors(&got, &expected), 0, "{kind} disagrees with Python PyMatching");
        // The fixture is not trivial: the decoders make real mistakes on it.
        assert!(count_errors(&got, &actual) > 50);
    }
}
