// The one translation unit that compiles PyMatching's sources (see
// pymatching_core.h), and qecd's two classes over them (see matching.h).
#include "decoder/cxx/pymatching_core.h"

#include "decoder/cxx/matching.h"
#include "decoder/src/blossom.rs.h"
#include "decoder/src/reweight.rs.h"

namespace qecd {

namespace {

// The slot in `from`'s adjacency that holds the edge to `to` (null: the boundary).
std::uint32_t* weight_slot(pm::DetectorNode& from, pm::DetectorNode* to) {
  for (std::size_t i = 0; i < from.neighbors.size(); i++) {
    if (from.neighbors[i] == to) return &from.neighbor_weights[i];
  }
  throw std::logic_error("an edge of the user graph is missing from the blossom graph");
}

}  // namespace

struct MwpmHolder {
  pm::Mwpm mwpm;
};

struct UserGraphHolder {
  pm::UserGraph graph;
};

PackedMatching::PackedMatching(rust::Str dem_text, bool correlated) : correlated_(correlated) {
  stim::DetectorErrorModel dem(std::string(dem_text).c_str());
  num_detectors_ = dem.count_detectors();
  num_observables_ = dem.count_observables();
  graph_ = std::make_unique<UserGraphHolder>(
      UserGraphHolder{pm::detector_error_model_to_user_graph(dem, correlated, pm::NUM_DISTINCT_WEIGHTS)});
  // Built now, so that the first batch does not pay for it.
  if (correlated_) {
    graph_->graph.get_mwpm_with_search_graph();
  } else {
    graph_->graph.get_mwpm();
  }
  observables_.resize(std::max<std::size_t>(graph_->graph.get_num_observables(), num_observables_));
}

PackedMatching::~PackedMatching() = default;

std::uint64_t PackedMatching::num_detectors() const { return num_detectors_; }
std::uint64_t PackedMatching::num_observables() const { return num_observables_; }

void PackedMatching::decode_packed(
    rust::Slice<const std::uint8_t> shots, std::size_t num_shots, rust::Slice<std::uint8_t> predictions) {
  const std::size_t stride = (num_detectors_ + 7) / 8;
  const std::size_t out_stride = (num_observables_ + 7) / 8;
  if (shots.size() != num_shots * stride || predictions.size() != num_shots * out_stride) {
    throw std::invalid_argument(
        "got " + std::to_string(shots.size()) + " bytes of shots and room for " +
        std::to_string(predictions.size()) + " bytes of predictions for " + std::to_string(num_shots) +
        " shots of " + std::to_string(stride) + " and " + std::to_string(out_stride) + " bytes");
  }
  auto& graph = graph_->graph;
  pm::Mwpm& mwpm = correlated_ ? graph.get_mwpm_with_search_graph() : graph.get_mwpm();
  const std::uint8_t* row = shots.data();
  std::uint8_t* out = predictions.data();
  for (std::size_t s = 0; s < num_shots; s++, row += stride, out += out_stride) {
    events_.clear();
    for (std::size_t b = 0; b < stride; b++) {
      for (unsigned bits = row[b]; bits != 0; bits &= bits - 1) {
        const std::uint64_t detector = 8 * b + static_cast<unsigned>(std::countr_zero(bits));
        if (detector >= num_detectors_) {
          throw std::invalid_argument(
              "shot " + std::to_string(s) + " has detection event " + std::to_string(detector) +
              " but the model has " + std::to_string(num_detectors_) + " detectors");
        }
        events_.push_back(detector);
      }
    }
    std::fill(observables_.begin(), observables_.end(), 0);
    pm::total_weight_int weight = 0;
    pm::decode_detection_events(mwpm, events_, observables_.data(), weight, correlated_);
    std::fill(out, out + out_stride, 0);
    for (std::size_t o = 0; o < num_observables_; o++) {
      out[o / 8] |= static_cast<std::uint8_t>((observables_[o] & 1) << (o % 8));
    }
  }
}

std::unique_ptr<PackedMatching> new_packed_matching(rust::Str dem_text, bool correlated) {
  return std::make_unique<PackedMatching>(dem_text, correlated);
}

ReweightMatching::ReweightMatching(rust::Str dem_text, double max_weight) {
  stim::DetectorErrorModel dem(std::string(dem_text).c_str());
  num_detectors_ = dem.count_detectors();
  num_observables_ = dem.count_observables();
  if (num_observables_ > 64) {
    throw std::invalid_argument(
        "per-shot weights support at most 64 observables; the model has " + std::to_string(num_observables_));
  }
  pm::UserGraph graph = pm::detector_error_model_to_user_graph(dem, false, pm::NUM_DISTINCT_WEIGHTS);
  double own_max = 0;
  for (const auto& e : graph.edges) {
    if (!(e.weight >= 0)) {
      throw std::invalid_argument(
          "per-shot weights need non-negative edge weights, but the edge (" + std::to_string(e.node1) + ", " +
          (e.node2 == SIZE_MAX ? std::string("boundary") : std::to_string(e.node2)) +
          ") has error probability above 1/2");
    }
    own_max = std::max(own_max, e.weight);
    std::uint64_t mask = 0;
    for (auto o : e.observable_indices) mask ^= std::uint64_t{1} << o;
    edges_.push_back(ReweightEdge{
        static_cast<std::uint64_t>(e.node1),
        e.node2 == SIZE_MAX ? UINT64_MAX : static_cast<std::uint64_t>(e.node2),
        mask,
        e.weight,
        e.error_probability});
  }
  // PyMatching scales weights so that the largest maps to its largest
  // integer. A weight above the model's own largest would not fit, so an
  // isolated node with a boundary edge of weight max_weight widens the scale.
  // With max_weight at most the model's largest, the scale (and so every
  // decode with the model's own weights) is PyMatching's.
  max_weight_ = std::max(max_weight, own_max);
  if (max_weight > own_max) {
    graph.add_or_merge_boundary_edge(graph.get_num_nodes(), {}, max_weight, 0.0, pm::DISALLOW);
  }
  mwpm_ = std::make_unique<MwpmHolder>(MwpmHolder{graph.to_mwpm(pm::NUM_DISTINCT_WEIGHTS, false)});
  auto& g = mwpm_->mwpm.flooder.graph;
  half_constant_ = g.normalising_constant / 2;
  for (const auto& e : edges_) {
    pm::DetectorNode& a = g.nodes[e.node1];
    if (e.node2 == UINT64_MAX) {
      slot_a_.push_back(weight_slot(a, nullptr));
      slot_b_.push_back(nullptr);
    } else {
      pm::DetectorNode& b = g.nodes[e.node2];
      slot_a_.push_back(weight_slot(a, &b));
      slot_b_.push_back(weight_slot(b, &a));
    }
    own_.push_back(*slot_a_.back());
  }
}

ReweightMatching::~ReweightMatching() = default;

std::uint64_t ReweightMatching::num_detectors() const { return num_detectors_; }
std::uint64_t ReweightMatching::num_observables() const { return num_observables_; }
double ReweightMatching::max_weight() const { return max_weight_; }

rust::Vec<ReweightEdge> ReweightMatching::edges() const {
  rust::Vec<ReweightEdge> out;
  out.reserve(edges_.size());
  for (const auto& e : edges_) out.push_back(e);
  return out;
}

double ReweightMatching::run(rust::Slice<const std::uint64_t> events, rust::Slice<std::uint8_t> observables) {
  if (observables.size() != num_observables_) {
    throw std::invalid_argument(
        "the observable buffer has " + std::to_string(observables.size()) + " entries, the model has " +
        std::to_string(num_observables_) + " observables");
  }
  events_.assign(events.begin(), events.end());
  for (auto d : events_) {
    if (d >= num_detectors_) {
      throw std::invalid_argument(
          "detection event " + std::to_string(d) + " is out of range for a model with " +
          std::to_string(num_detectors_) + " detectors");
    }
  }
  pm::MatchingResult result = pm::decode_detection_events_for_up_to_64_observables(mwpm_->mwpm, events_, false);
  for (std::size_t o = 0; o < num_observables_; o++) observables[o] = (result.obs_mask >> o) & 1;
  return static_cast<double>(result.weight) / mwpm_->mwpm.flooder.graph.normalising_constant;
}

double ReweightMatching::decode(rust::Slice<const std::uint64_t> events, rust::Slice<std::uint8_t> observables) {
  restore();
  return run(events, observables);
}

void ReweightMatching::restore() {
  if (!dirty_) return;
  for (std::size_t i = 0; i < own_.size(); i++) {
    *slot_a_[i] = own_[i];
    if (slot_b_[i] != nullptr) *slot_b_[i] = own_[i];
  }
  dirty_ = false;
}

double ReweightMatching::decode_with_weights(
    rust::Slice<const std::uint64_t> events,
    rust::Slice<const double> weights,
    rust::Slice<std::uint8_t> observables) {
  if (weights.size() != edges_.size()) {
    throw std::invalid_argument(
        "got " + std::to_string(weights.size()) + " edge weights for a graph of " + std::to_string(edges_.size()) +
        " edges");
  }
  // The Rust side has checked that every weight is finite. Every edge is
  // written, so the model's own weights come back only when a plain decode
  // needs them (restore()), not after every shot.
  dirty_ = true;
  for (std::size_t i = 0; i < weights.size(); i++) {
    double w = std::min(std::max(weights[i], 0.0), max_weight_);
    // PyMatching's discretisation: twice the rounded scaled weight, so that
    // every collision happens at an integer time. The weight is not
    // negative, so adding one half and truncating is round() (ties away
    // from zero), without a library call.
    auto v = 2 * static_cast<std::uint32_t>(w * half_constant_ + 0.5);
    *slot_a_[i] = v;
    if (slot_b_[i] != nullptr) *slot_b_[i] = v;
  }
  return run(events, observables);
}

std::unique_ptr<ReweightMatching> new_reweight_matching(rust::Str dem_text, double max_weight) {
  return std::make_unique<ReweightMatching>(dem_text, max_weight);
}

}  // namespace qecd
