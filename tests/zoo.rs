//! Every zoo checkpoint in fixtures/models loads and decodes its golden shots
//! to the predictions stored with it (scripts/make_zoo_fixtures.sh).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn zoo_checkpoints_reproduce_their_stored_predictions() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/models"));
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".fixture.b8") else { continue };
        let f = |ext: &str| dir.join(format!("{stem}{ext}"));
        let tmp = tempfile::tempdir().unwrap();
        let pred = tmp.path().join("pred.01");
        let out = Command::new(env!("CARGO_BIN_EXE_qecd"))
            .args(["predict", "--decoder", "neural", "--model"])
            .arg(f(".safetensors"))
            .arg("--circuit")
            .arg(f(".fixture.stim"))
            .arg("--in")
            .arg(&path)
            .arg("--out")
            .arg(&pred)
            .output()
            .unwrap();
        assert!(out.status.success(), "{stem}: {}", String::from_utf8_lossy(&out.stderr));
        let got = std::fs::read_to_string(&pred).unwrap();
        let want = std::fs::read_to_string(f(".fixture.pred.01")).unwrap();
        assert_eq!(got.lines().count(), want.lines().count());
        // The predictions were stored from the tch forward; the kernels agree
        // within 1e-4 in the logits, so a logit within that of 0 may flip.
        let differ = got.lines().zip(want.lines()).filter(|(a, b)| a != b).count();
        assert!(differ <= 1, "{stem}: {differ} predictions changed");
        checked += 1;
    }
    assert!(checked >= 1, "no zoo fixtures found in {}", dir.display());
}
