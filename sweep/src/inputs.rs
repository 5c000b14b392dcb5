//! What a sweep's cases decode with, besides their circuits: the neural
//! checkpoints, the posterior model and the `--decoder-dem` files; and the
//! [`Case`] each (decoder, experiment, noise) becomes with them.
//!
//! `qecd sweep` and the Python package's `qecd.sweep_tasks` both make their
//! cases here, so the model a case names, the DEM file it decodes with, its
//! metadata and its strong id are the same whichever of the two made it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use decoder::{DecoderKind, NeuralModel};
use models::posterior::PosteriorModel;
use simulator_bridge::{DemFile, DemShape, MemoryExperiment, NoiseModel};

use crate::case::{Case, CircuitTexts, file_sha256};
use crate::decoders::{load_model, load_posterior};
use crate::sweep::pick_dem;

/// The models and DEM files of a sweep, read once and shared by its cases.
pub struct CaseInputs {
    /// Neural checkpoints, each with the path its cases' metadata names
    /// (`NAME.safetensors` for the zoo's).
    checkpoints: Vec<(PathBuf, Arc<NeuralModel>)>,
    /// Whether `checkpoints` is the zoo built into qecd (no `--model` given).
    zoo: bool,
    /// The sha256 of each of `checkpoints`' files (none for the zoo's).
    checkpoint_hashes: Vec<Option<String>>,
    /// The sha256 of the posterior model's file (none for the built-in one).
    posterior_hash: Option<String>,
    /// The posterior model's file (`None`: the built-in one).
    posterior_path: Option<PathBuf>,
    /// The posterior model and its name, loaded by the first neural-matching case.
    posterior: Option<(String, Arc<PosteriorModel>)>,
    /// The `--decoder-dem` files.
    dems: Vec<Arc<DemFile>>,
    /// Whether each of `dems` was given to a case.
    used: Vec<bool>,
    /// The last circuit's texts and shape, for picking its DEM file.
    shape: Option<(Arc<CircuitTexts>, DemShape)>,
}

impl CaseInputs {
    /// Reads the DEM files, then the checkpoints at `models` (none: the zoo).
    /// The posterior model at `posterior` (none: the built-in one) is read
    /// by the first neural-matching case.
    pub fn read(models: &[PathBuf], posterior: Option<&Path>, decoder_dems: &[PathBuf]) -> Result<Self> {
        let dems: Vec<Arc<DemFile>> =
            decoder_dems.iter().map(|p| Ok(Arc::new(DemFile::read(p)?))).collect::<Result<_>>()?;
        let checkpoints: Vec<(PathBuf, Arc<NeuralModel>)> = if models.is_empty() {
            let zoo = NeuralModel::zoo()?;
            zoo.into_iter().map(|m| (PathBuf::from(format!("{}.safetensors", m.name())), Arc::new(m))).collect()
        } else {
            models.iter().map(|p| Ok((p.clone(), load_model(p)?))).collect::<Result<_>>()?
        };
        let checkpoint_hashes = if models.is_empty() {
            vec![None; checkpoints.len()]
        } else {
            models.iter().map(|p| Ok(Some(file_sha256(p)?))).collect::<Result<_>>()?
        };
        let posterior_hash = posterior.map(file_sha256).transpose()?;
        Ok(Self {
            checkpoints,
            zoo: models.is_empty(),
            checkpoint_hashes,
            posterior_hash,
            posterior_path: posterior.map(Path::to_path_buf),
            posterior: None,
            used: vec![false; dems.len()],
            dems,
            shape: None,
        })
    }

    /// Whether the neural checkpoints are the zoo built into qecd.
    pub fn zoo(&self) -> bool {
        self.zoo
    }

    /// The neural checkpoint for `experiment`'s distance and basis, with its
    /// path; an error listing the checkpoints when none has them.
    pub fn checkpoint(&self, experiment: &MemoryExperiment) -> Result<(&Path, &Arc<NeuralModel>)> {
        let found =
            self.checkpoints.iter().find(|(_, c)| c.distance() == experiment.distance && c.basis() == experiment.basis);
        let (path, model) = found.with_context(|| {
            let have: Vec<String> = self.checkpoints.iter().map(|(p, _)| p.display().to_string()).collect();
            format!(
                "no neural model for d={} memory-{} (models: {}); give one with --model",
                experiment.distance,
                experiment.basis,
                have.join(", ")
            )
        })?;
        Ok((path.as_path(), model))
    }

    /// The case of `decoder` on `experiment` under `noise`, whose circuit is
    /// `texts`: with its checkpoint (neural), its posterior model
    /// (neural-matching) and the one DEM file that fits its circuit (every
    /// decoder but neural, which uses no DEM, when files were given).
    pub fn case(
        &mut self,
        decoder: DecoderKind,
        experiment: MemoryExperiment,
        noise: NoiseModel,
        texts: Arc<CircuitTexts>,
    ) -> Result<Case> {
        let (model, model_hash) = match decoder {
            DecoderKind::Neural => {
                let (path, model) = self.checkpoint(&experiment)?;
                let at = self.checkpoints.iter().position(|(_, m)| Arc::ptr_eq(m, model)).expect("one of them");
                (Some((path.to_path_buf(), model.clone())), self.checkpoint_hashes[at].clone())
            }
            DecoderKind::NeuralMatching => (None, self.posterior_hash.clone()),
            _ => (None, None),
        };
        let posterior = if decoder == DecoderKind::NeuralMatching {
            if self.posterior.is_none() {
                self.posterior = Some(load_posterior(self.posterior_path.as_deref())?);
            }
            self.posterior.clone()
        } else {
            None
        };
        let dem = if self.dems.is_empty() || decoder == DecoderKind::Neural {
            None
        } else {
            let circuit = match &self.shape {
                Some((of, circuit)) if Arc::ptr_eq(of, &texts) => circuit,
                _ => {
                    let parsed: stim::Circuit = texts.circuit.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
                    &self.shape.insert((texts.clone(), DemShape::of_circuit(&parsed)?)).1
                }
            };
            let label = format!(
                "d={} r={} memory-{} {} p={}",
                experiment.distance,
                experiment.rounds,
                experiment.basis,
                noise.name(),
                noise.p()
            );
            let file = pick_dem(&self.dems, circuit, &label)?.clone();
            self.used[self.dems.iter().position(|f| Arc::ptr_eq(f, &file)).expect("one of them")] = true;
            Some(file)
        };
        let case = Case::build(
            decoder,
            experiment,
            noise,
            texts,
            model.as_ref().map(|(p, m)| (p.as_path(), m.clone())),
            posterior.as_ref().map(|(n, m)| (n.as_str(), m.clone())),
        )?;
        let case = match model_hash {
            Some(hash) => case.with_model_hash(&hash)?,
            None => case,
        };
        match dem {
            Some(dem) => case.with_decoder_dem(dem),
            None => Ok(case),
        }
    }

    /// The DEM files, each with whether a case has been given it.
    pub fn decoder_dems(&self) -> impl Iterator<Item = (&Arc<DemFile>, bool)> {
        self.dems.iter().zip(self.used.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simulator_bridge::Basis;

    /// A neural case names its zoo checkpoint, a neural-matching case the
    /// built-in posterior model; a DEM file goes to the other decoders'
    /// cases of its circuit, and the neural case keeps the circuit's DEM.
    #[test]
    fn cases_take_their_models_and_dem_files() {
        let tmp = tempfile::tempdir().unwrap();
        let exp = MemoryExperiment::new(3, 3, Basis::Z).unwrap();
        let noise = NoiseModel::Si1000 { p: 0.003 };
        let texts = Arc::new(CircuitTexts::build(exp, noise).unwrap());
        let path = tmp.path().join("own.dem");
        std::fs::write(&path, &texts.dem).unwrap();
        let mut inputs = CaseInputs::read(&[], None, &[path]).unwrap();
        assert!(inputs.zoo());
        assert!(inputs.decoder_dems().all(|(_, used)| !used));
        let neural = inputs.case(DecoderKind::Neural, exp, noise, texts.clone()).unwrap();
        assert_eq!(neural.metadata["model"], "d3_z_si1000_p003.safetensors");
        assert!(neural.decoder_dem.is_none() && neural.model.is_some());
        assert!(inputs.decoder_dems().all(|(_, used)| !used), "the neural case took a DEM file");
        let nm = inputs.case(DecoderKind::NeuralMatching, exp, noise, texts.clone()).unwrap();
        assert_eq!(nm.metadata["model"], models::zoo::POSTERIOR_NAME);
        assert_eq!(nm.metadata["dem"], "own.dem");
        assert!(nm.posterior.is_some() && nm.dem_text() == texts.dem);
        assert!(inputs.decoder_dems().all(|(_, used)| used));
        // Without a checkpoint of its distance, a neural case is refused, naming the ones there are.
        let x = MemoryExperiment::new(3, 3, Basis::X).unwrap();
        let Err(err) = inputs.case(DecoderKind::Neural, x, noise, texts) else { panic!("a d=3 memory-X neural case") };
        let err = err.to_string();
        assert!(err.starts_with("no neural model for d=3 memory-X (models: "), "{err}");
        assert!(err.contains("d3_z_si1000_p003.safetensors"), "{err}");
    }

    /// A checkpoint file of a user's is named by its hash too: one with the
    /// zoo's file name but other weights is another case, with another
    /// strong id, and so is the zoo's own file given with --model (its bytes
    /// are the zoo's, but qecd does not assume so).
    #[test]
    fn a_users_checkpoint_is_a_case_apart_from_the_zoos_of_its_name() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let exp = MemoryExperiment::new(3, 10, Basis::Z).unwrap();
        let noise = NoiseModel::Si1000 { p: 0.003 };
        let texts = Arc::new(CircuitTexts::build(exp, noise).unwrap());
        let zoo_case = CaseInputs::read(&[], None, &[]).unwrap().case(DecoderKind::Neural, exp, noise, texts.clone());
        let zoo_case = zoo_case.unwrap();
        assert!(zoo_case.metadata.get("model_sha256").is_none());

        let tmp = tempfile::tempdir().unwrap();
        let other = tmp.path().join("d3_z_si1000_p003.safetensors");
        std::fs::copy(root.join("fixtures/models/finetuned/d3_z_crosstalk.safetensors"), &other).unwrap();
        let mut user = CaseInputs::read(std::slice::from_ref(&other), None, &[]).unwrap();
        let user_case = user.case(DecoderKind::Neural, exp, noise, texts.clone()).unwrap();
        assert_eq!(user_case.metadata["model"], zoo_case.metadata["model"]);
        assert_eq!(user_case.metadata["model_sha256"], file_sha256(&other).unwrap()[..12]);
        assert_ne!(user_case.strong_id, zoo_case.strong_id);

        let same = root.join("fixtures/models/d3_z_si1000_p003.safetensors");
        let mut given = CaseInputs::read(std::slice::from_ref(&same), None, &[]).unwrap();
        let given_case = given.case(DecoderKind::Neural, exp, noise, texts).unwrap();
        assert_ne!(given_case.strong_id, user_case.strong_id);
        assert_ne!(given_case.strong_id, zoo_case.strong_id);
    }
}
