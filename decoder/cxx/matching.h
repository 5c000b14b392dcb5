// qecd's two handles on PyMatching's sparse-blossom matching.
//
// PackedMatching decodes batches of bit-packed shots, plain or two-pass
// correlated, as PyMatching's own `decode_batch` does. ReweightMatching gives
// the blossom graph per-shot edge weights: PyMatching builds its graph once
// per detector error model, with integer edge weights, and correlated
// matching already lowers some of those weights for one shot and restores
// them afterwards; ReweightMatching does the same for every edge at once, so
// that a decoder which estimates each shot's error probabilities (belief
// propagation, a neural network) can hand them to matching without
// rebuilding the graph.
//
// Both are implemented in matching.cc, the one translation unit that compiles
// PyMatching's sources, inside an anonymous namespace (see pymatching_core.h).
// Other translation units (cxx's glue) never see PyMatching's types: they
// reach them through the opaque holders below.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "rust/cxx.h"

namespace qecd {

struct ReweightEdge;
// A PyMatching `Mwpm` (the blossom graph and its flooder), defined in matching.cc.
struct MwpmHolder;
// A PyMatching `UserGraph` (which owns the graph's `Mwpm`s), defined in matching.cc.
struct UserGraphHolder;

class PackedMatching {
 public:
  // The matching graph of `dem_text`; `correlated` keeps the correlations
  // between the halves of decomposed errors, for two-pass decoding.
  PackedMatching(rust::Str dem_text, bool correlated);
  ~PackedMatching();

  std::uint64_t num_detectors() const;
  std::uint64_t num_observables() const;
  // Decodes `num_shots` rows of ceil(num_detectors / 8) bytes (detector k is
  // bit k % 8 of byte k / 8) into rows of ceil(num_observables / 8) bytes of
  // predicted observable flips, in the same layout.
  void decode_packed(
      rust::Slice<const std::uint8_t> shots, std::size_t num_shots, rust::Slice<std::uint8_t> predictions);

 private:
  std::unique_ptr<UserGraphHolder> graph_;
  bool correlated_;
  std::uint64_t num_detectors_;
  std::uint64_t num_observables_;
  // One shot's detection events, reused across shots.
  std::vector<std::uint64_t> events_;
  // One shot's predictions, one byte per observable of the graph.
  std::vector<std::uint8_t> observables_;
};

std::unique_ptr<PackedMatching> new_packed_matching(rust::Str dem_text, bool correlated);

class ReweightMatching {
 public:
  ReweightMatching(rust::Str dem_text, double max_weight);
  ~ReweightMatching();

  std::uint64_t num_detectors() const;
  std::uint64_t num_observables() const;
  double max_weight() const;
  rust::Vec<ReweightEdge> edges() const;
  // Decodes with the graph's own weights. Returns the solution's weight.
  double decode(rust::Slice<const std::uint64_t> events, rust::Slice<std::uint8_t> observables);
  // Decodes with one weight per edge (in the order of edges()), each finite
  // (the caller checks). The graph's own weights are restored before the
  // next plain decode. Returns the solution's weight under
  // the given weights.
  double decode_with_weights(
      rust::Slice<const std::uint64_t> events,
      rust::Slice<const double> weights,
      rust::Slice<std::uint8_t> observables);

 private:
  double run(rust::Slice<const std::uint64_t> events, rust::Slice<std::uint8_t> observables);
  void restore();

  std::unique_ptr<MwpmHolder> mwpm_;
  std::vector<ReweightEdge> edges_;
  // Each edge's weight is stored twice in the blossom graph (once per
  // endpoint); a boundary edge once (second slot null).
  std::vector<std::uint32_t*> slot_a_;
  std::vector<std::uint32_t*> slot_b_;
  std::vector<std::uint32_t> own_;
  std::vector<std::uint64_t> events_;
  double half_constant_;
  double max_weight_;
  // Whether the graph holds a shot's weights rather than its own.
  bool dirty_ = false;
  std::uint64_t num_detectors_;
  std::uint64_t num_observables_;
};

std::unique_ptr<ReweightMatching> new_reweight_matching(rust::Str dem_text, double max_weight);

}  // namespace qecd
