//! The search's saved state: one safetensors file. The agent's tensors (weights, Adam moments,
//! the replay buffer as two dense arrays) are stored raw, so saving costs a memcpy and an fsync
//! rather than formatting millions of floats; the small rest (configuration, counters, the best
//! and uniform records, timings) is one JSON string in the file's metadata. Every f64 in it is
//! written in shortest round-trip form and read back exactly.

use super::ddpg::AgentSnapshot;
use super::{CandidateRecord, Fingerprint, SearchConfig, TimeBreakdown};
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

const META_KEY: &str = "lfgcl_search";
const FORMAT: &str = "lfgcl-search-state/2";
/// The state of any search this tool can run is far below this; a bigger file is not ours.
const MAX_STATE_BYTES: u64 = 4 << 30;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SavedMeta {
    pub format: String,
    pub config: SearchConfig,
    pub fingerprint: Fingerprint,
    pub episodes_done: usize,
    pub evaluated: usize,
    pub time: TimeBreakdown,
    pub uniform: CandidateRecord,
    pub best: Option<CandidateRecord>,
    pub pending_updates: usize,
    /// Length of `candidates.jsonl` when this state was saved: a resume cuts the log back to it.
    pub log_bytes: u64,
    pub agent_meta: serde_json::Value,
}

pub(crate) struct SavedSearch {
    pub meta: SavedMeta,
    pub agent: AgentSnapshot,
}

pub(crate) fn write(path: &Path, s: &SavedSearch) -> Result<()> {
    let bytes: Vec<Vec<u8>> =
        s.agent.tensors.iter().map(|(_, _, v)| bytemuck::cast_slice::<f32, u8>(v).to_vec()).collect();
    let mut views = Vec::with_capacity(bytes.len());
    for ((name, dims, _), b) in s.agent.tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, dims.clone(), b)
            .map_err(|e| Error::Invalid(format!("saving the search state: tensor {name}: {e}")))?;
        views.push((name.clone(), view));
    }
    let mut meta = s.meta.clone();
    meta.format = FORMAT.into();
    meta.agent_meta = s.agent.meta.clone();
    let json = serde_json::to_string(&meta).map_err(|e| Error::format(path, format!("serialising: {e}")))?;
    let file = safetensors::serialize(views, Some(HashMap::from([(META_KEY.to_string(), json)])))
        .map_err(|e| Error::format(path, format!("serialising: {e}")))?;
    write_atomic(path, &file)
}

pub(crate) fn read(path: &Path) -> Result<SavedSearch> {
    let bytes = crate::fsio::read_regular(path, MAX_STATE_BYTES)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, format!("not a search state: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::format(path, format!("{e}")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| Error::format(path, "not a search state (no search metadata)"))?;
    let meta: SavedMeta =
        serde_json::from_str(json).map_err(|e| Error::format(path, format!("search metadata: {e}")))?;
    if meta.format != FORMAT {
        return Err(Error::format(path, format!("search state format {:?}, expected {FORMAT:?}", meta.format)));
    }
    let mut tensors = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    for name in names {
        let t = st.tensor(&name).map_err(|e| Error::format(path, format!("{name}: {e}")))?;
        if t.dtype() != Dtype::F32 {
            return Err(Error::format(path, format!("{name}: dtype {:?}, expected F32", t.dtype())));
        }
        let values: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        tensors.push((name, t.shape().to_vec(), values));
    }
    let agent = AgentSnapshot { tensors, meta: meta.agent_meta.clone() };
    Ok(SavedSearch { meta, agent })
}
