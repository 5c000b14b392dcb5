// Per-shot edge weights on PyMatching's matching graph.
//
// PyMatching builds its blossom graph once per detector error model, with
// integer edge weights. Correlated matching already lowers some of those
// weights for one shot and restores them afterwards; this class does the
// same for every edge at once, so that a decoder which estimates each
// shot's error probabilities (belief propagation, a neural network) can
// hand them to matching without rebuilding the graph.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "rust/cxx.h"

namespace pm {
struct Mwpm;
}

namespace qecd {

struct ReweightEdge;

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

  std::unique_ptr<pm::Mwpm> mwpm_;
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
