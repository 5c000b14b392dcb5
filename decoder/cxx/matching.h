// qecd's handles on PyMatching's sparse-blossom matching.
//
// PackedMatching decodes batches of bit-packed shots, plain or two-pass
// correlated, as PyMatching's own `decode_batch` does. GapMatching decodes
// the same shots and, for each observable, also the best solution of the
// other logical class, for the weight gap between the two. ReweightMatching
// gives the blossom graph per-shot edge weights: PyMatching builds its graph
// once per detector error model, with integer edge weights, and correlated
// matching already lowers some of those weights for one shot and restores
// them afterwards; ReweightMatching does the same for every edge at once, so
// that a decoder which estimates each shot's error probabilities (belief
// propagation, a neural network) can hand them to matching without
// rebuilding the graph.
//
// All are implemented in matching.cc, the one translation unit that compiles
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
// One observable's matching graph with the boundary split in two, defined in matching.cc.
struct SplitBoundaryGraph;

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

// The weight gap of a shot, for observable k: how much heavier the best
// solution is whose prediction for k is the complement of the hard
// decision's, in PyMatching's normalised weights (integer weight divided by
// the graph's normalising constant).
//
// A solution's class for k is fixed by which boundary edges it uses: if k is
// a cut of the graph (every error that flips k crosses it), each detector
// has a side of the cut, and the boundary splits into the boundary seen from
// side 0 and the one seen from side 1. Matching on a graph whose two
// boundaries are virtual detectors, with events placed on them, then finds
// the best solution of the class asked for (see matching.cc).
class GapMatching {
 public:
  // The graphs of `dem_text`: the model's own, for the hard decision, and
  // one per observable with its boundary split; `correlated` decodes all of
  // them two-pass correlated. Throws std::invalid_argument when an
  // observable is not a cut of the graph.
  GapMatching(rust::Str dem_text, bool correlated);
  ~GapMatching();

  std::uint64_t num_detectors() const;
  std::uint64_t num_observables() const;
  // Decodes `num_shots` shots, laid out as for PackedMatching::decode_packed,
  // into their predictions (the same layout) and `num_observables` gaps per
  // shot, row-major.
  void decode_packed(
      rust::Slice<const std::uint8_t> shots,
      std::size_t num_shots,
      rust::Slice<std::uint8_t> predictions,
      rust::Slice<double> gaps);

 private:
  // Decodes `events_` into observables_ and gaps_.
  void decode_events();

  std::unique_ptr<UserGraphHolder> graph_;
  // Index k: observable k's graph with the boundary split.
  std::vector<std::unique_ptr<SplitBoundaryGraph>> split_;
  bool correlated_;
  std::uint64_t num_detectors_;
  std::uint64_t num_observables_;
  // One shot's detection events, and those of the other class's decoding.
  std::vector<std::uint64_t> events_;
  std::vector<std::uint64_t> forced_events_;
  // One shot's predictions (one byte per observable of the graph), and
  // those of the other class's decoding.
  std::vector<std::uint8_t> observables_;
  std::vector<std::uint8_t> forced_observables_;
  // One shot's gaps, one per observable.
  std::vector<double> gaps_;
  // The predictions and gaps of a shot with no events, once one was decoded.
  bool quiet_known_ = false;
  std::vector<std::uint8_t> quiet_observables_;
  std::vector<double> quiet_gaps_;
};

std::unique_ptr<GapMatching> new_gap_matching(rust::Str dem_text, bool correlated);

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
