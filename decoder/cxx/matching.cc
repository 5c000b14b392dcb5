// The one translation unit that compiles PyMatching's sources (see
// pymatching_core.h), and qecd's classes over them (see matching.h).
#include "decoder/cxx/pymatching_core.h"

#include "decoder/cxx/matching.h"
#include "decoder/src/blossom.rs.h"
#include "decoder/src/gap.rs.h"
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

// Checks that `num_shots` rows of `stride` bytes of shots, and of
// `out_stride` bytes of predictions, fill the two buffers.
void check_batch(
    std::size_t shots, std::size_t predictions, std::size_t num_shots, std::size_t stride, std::size_t out_stride) {
  if (shots != num_shots * stride || predictions != num_shots * out_stride) {
    throw std::invalid_argument(
        "got " + std::to_string(shots) + " bytes of shots and room for " + std::to_string(predictions) +
        " bytes of predictions for " + std::to_string(num_shots) + " shots of " + std::to_string(stride) +
        " and " + std::to_string(out_stride) + " bytes");
  }
}

// The detection events of shot `s`, whose bit-packed row starts at `row`,
// in increasing order.
void unpack_events(
    const std::uint8_t* row, std::size_t s, std::uint64_t num_detectors, std::vector<std::uint64_t>& events) {
  events.clear();
  const std::size_t stride = (num_detectors + 7) / 8;
  for (std::size_t b = 0; b < stride; b++) {
    for (unsigned bits = row[b]; bits != 0; bits &= bits - 1) {
      const std::uint64_t detector = 8 * b + static_cast<unsigned>(std::countr_zero(bits));
      if (detector >= num_detectors) {
        throw std::invalid_argument(
            "shot " + std::to_string(s) + " has detection event " + std::to_string(detector) +
            " but the model has " + std::to_string(num_detectors) + " detectors");
      }
      events.push_back(detector);
    }
  }
}

// Writes one byte per observable into a bit-packed row of predictions.
void pack_observables(const std::uint8_t* observables, std::uint64_t num_observables, std::uint8_t* out) {
  std::fill(out, out + (num_observables + 7) / 8, 0);
  for (std::size_t o = 0; o < num_observables; o++) {
    out[o / 8] |= static_cast<std::uint8_t>((observables[o] & 1) << (o % 8));
  }
}

// Decodes `events` on `graph` into `observables` (one byte per observable of
// the graph, cleared first) and returns the solution's normalised weight.
double decode_weighted(
    pm::UserGraph& graph,
    bool correlated,
    const std::vector<std::uint64_t>& events,
    std::vector<std::uint8_t>& observables) {
  pm::Mwpm& mwpm = correlated ? graph.get_mwpm_with_search_graph() : graph.get_mwpm();
  std::fill(observables.begin(), observables.end(), 0);
  pm::total_weight_int weight = 0;
  pm::decode_detection_events(mwpm, events, observables.data(), weight, correlated);
  return static_cast<double>(weight) / mwpm.flooder.graph.normalising_constant;
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
  check_batch(shots.size(), predictions.size(), num_shots, stride, out_stride);
  auto& graph = graph_->graph;
  pm::Mwpm& mwpm = correlated_ ? graph.get_mwpm_with_search_graph() : graph.get_mwpm();
  const std::uint8_t* row = shots.data();
  std::uint8_t* out = predictions.data();
  for (std::size_t s = 0; s < num_shots; s++, row += stride, out += out_stride) {
    unpack_events(row, s, num_detectors_, events_);
    std::fill(observables_.begin(), observables_.end(), 0);
    pm::total_weight_int weight = 0;
    pm::decode_detection_events(mwpm, events_, observables_.data(), weight, correlated_);
    pack_observables(observables_.data(), num_observables_, out);
  }
}

std::unique_ptr<PackedMatching> new_packed_matching(rust::Str dem_text, bool correlated) {
  return std::make_unique<PackedMatching>(dem_text, correlated);
}

namespace {

// In SplitBoundaryGraph::side: a detector outside the component that the
// observable cuts.
constexpr std::uint8_t kOffCut = 2;

// Whether the targets of one component of an error flip `observable`.
std::uint8_t flips_observable(std::span<const stim::DemTarget> component, std::uint64_t observable) {
  std::uint8_t flips = 0;
  for (const auto& t : component) flips ^= t.is_observable_id() && t.raw_id() == observable;
  return flips;
}

// The detectors of one component of an error, in order.
void component_detectors(std::span<const stim::DemTarget> component, std::vector<std::uint64_t>& detectors) {
  detectors.clear();
  for (const auto& t : component) {
    if (t.is_relative_detector_id()) detectors.push_back(t.raw_id());
  }
}

// Each detector's side (0 or 1) of the cut that `observable` draws through
// the matching graph of `flat` (a flattened model of `num_detectors`
// detectors): an edge flips the observable exactly when its two detectors
// lie on different sides, and a boundary edge reaches the boundary on its
// detector's side when it does not flip the observable, on the other side
// when it does. Sides are labelled from the lowest detector of each
// connected component (side 0) outwards, over the errors that can happen.
// Exactly one component must reach the boundary on both sides: the one the
// observable cuts. Every other detector is kOffCut.
std::vector<std::uint8_t> cut_sides(
    const stim::DetectorErrorModel& flat, std::uint64_t num_detectors, std::uint64_t observable) {
  const std::string name = "observable L" + std::to_string(observable);
  // Per detector: its neighbours, each with whether the edge flips the observable.
  std::vector<std::vector<std::pair<std::uint64_t, std::uint8_t>>> neighbours(num_detectors);
  // Boundary edges: the detector, and whether the edge flips the observable.
  std::vector<std::pair<std::uint64_t, std::uint8_t>> to_boundary;
  std::vector<std::uint64_t> detectors;
  for (const auto& instruction : flat.instructions) {
    if (instruction.type != stim::DemInstructionType::DEM_ERROR || instruction.arg_data[0] <= 0) continue;
    instruction.for_separated_targets([&](std::span<const stim::DemTarget> component) {
      component_detectors(component, detectors);
      const std::uint8_t flips = flips_observable(component, observable);
      if (detectors.size() == 1) {
        to_boundary.push_back({detectors[0], flips});
      } else if (detectors.size() == 2) {
        neighbours[detectors[0]].push_back({detectors[1], flips});
        neighbours[detectors[1]].push_back({detectors[0], flips});
      } else if (detectors.size() > 2) {
        throw std::invalid_argument(
            "weight gaps need a graphlike model, but an error has a component of " +
            std::to_string(detectors.size()) + " detectors");
      } else if (flips) {
        throw std::invalid_argument("weight gaps: " + name + " is flipped by an error that no detector sees");
      }
    });
  }

  std::vector<std::uint8_t> side(num_detectors, kOffCut);
  std::vector<std::uint64_t> component(num_detectors, 0);
  std::uint64_t num_components = 0;
  std::vector<std::uint64_t> stack;
  for (std::uint64_t root = 0; root < num_detectors; root++) {
    if (side[root] != kOffCut) continue;
    side[root] = 0;
    component[root] = num_components;
    stack.push_back(root);
    while (!stack.empty()) {
      const std::uint64_t d = stack.back();
      stack.pop_back();
      for (const auto& [n, flips] : neighbours[d]) {
        const std::uint8_t want = side[d] ^ flips;
        if (side[n] == kOffCut) {
          side[n] = want;
          component[n] = num_components;
          stack.push_back(n);
        } else if (side[n] != want) {
          throw std::invalid_argument(
              "weight gaps: " + name + " is not a cut of the matching graph (a cycle of errors flips it)");
        }
      }
    }
    num_components++;
  }

  // Per component: bit s is set when it reaches the boundary on side s.
  std::vector<std::uint8_t> reaches(num_components, 0);
  for (const auto& [d, flips] : to_boundary) reaches[component[d]] |= 1 << (side[d] ^ flips);
  std::uint64_t cut = num_components;
  for (std::uint64_t c = 0; c < num_components; c++) {
    if (reaches[c] != 3) continue;
    if (cut != num_components) {
      throw std::invalid_argument(
          "weight gaps: " + name + " cuts more than one connected component of the matching graph");
    }
    cut = c;
  }
  if (cut == num_components) {
    throw std::invalid_argument(
        "weight gaps: no connected component of the matching graph reaches the boundary on both sides of " + name);
  }
  for (std::uint64_t d = 0; d < num_detectors; d++) {
    if (component[d] != cut) side[d] = kOffCut;
  }
  return side;
}

// `flat` with every boundary edge of the cut's component (the detectors of
// `side` not kOffCut) ended on a virtual detector instead of the boundary:
// `boundary` where it reaches side 0's boundary, `boundary + 1` where it
// reaches side 1's. Everything else is copied unchanged and in order, so
// that PyMatching builds the graph as it builds the model's own.
stim::DetectorErrorModel split_boundary(
    const stim::DetectorErrorModel& flat,
    const std::vector<std::uint8_t>& side,
    std::uint64_t observable,
    std::uint64_t boundary) {
  stim::DetectorErrorModel split;
  std::vector<stim::DemTarget> targets;
  std::vector<std::uint64_t> detectors;
  for (const auto& instruction : flat.instructions) {
    if (instruction.type != stim::DemInstructionType::DEM_ERROR) {
      split.append_dem_instruction(instruction);
      continue;
    }
    targets.clear();
    bool first = true;
    instruction.for_separated_targets([&](std::span<const stim::DemTarget> component) {
      if (!first) targets.push_back(stim::DemTarget::separator());
      first = false;
      targets.insert(targets.end(), component.begin(), component.end());
      component_detectors(component, detectors);
      if (detectors.size() == 1 && side[detectors[0]] != kOffCut) {
        const std::uint8_t reached = side[detectors[0]] ^ flips_observable(component, observable);
        targets.push_back(stim::DemTarget::relative_detector_id(boundary + reached));
      }
    });
    split.append_error_instruction(instruction.arg_data[0], targets, instruction.tag);
  }
  return split;
}

}  // namespace

struct SplitBoundaryGraph {
  // The model's graph with the cut's boundary split (split_boundary()).
  pm::UserGraph graph;
  // Per detector of the model: its side of the cut, or kOffCut (cut_sides()).
  std::vector<std::uint8_t> side;
  // The virtual detector that is side 0's boundary; side 1's is the next.
  std::uint64_t boundary;

  // `events` with events on the virtual boundaries added so that every
  // solution predicts `want` for the observable.
  //
  // Within the cut's component, a path between two events flips the
  // observable once per crossing of the cut, as often as the parity of the
  // two events' sides; a path from an event to a boundary, as the parity of
  // the event's side and the boundary's. So a solution predicts the parity
  // of the events on side 1 plus that of its paths to side 1's boundary.
  // Events on the virtual boundaries fix the latter: paths to either
  // boundary are as many (mod 2) as the events, and those to side 1's must
  // number (mod 2) `want` plus the events on side 1.
  void force(const std::vector<std::uint64_t>& events, std::uint8_t want, std::vector<std::uint64_t>& forced) const {
    forced.assign(events.begin(), events.end());
    std::uint8_t odd_events = 0;
    std::uint8_t odd_on_one = 0;
    for (auto d : events) {
      if (side[d] == kOffCut) continue;
      odd_events ^= 1;
      odd_on_one ^= side[d];
    }
    const std::uint8_t odd_to_one = want ^ odd_on_one;
    // Events are in increasing order, and the virtual detectors come after
    // every detector of the model.
    if (odd_events) {
      forced.push_back(boundary + odd_to_one);
    } else if (odd_to_one) {
      forced.push_back(boundary);
      forced.push_back(boundary + 1);
    }
  }
};

GapMatching::GapMatching(rust::Str dem_text, bool correlated) : correlated_(correlated) {
  stim::DetectorErrorModel dem(std::string(dem_text).c_str());
  num_detectors_ = dem.count_detectors();
  num_observables_ = dem.count_observables();
  graph_ = std::make_unique<UserGraphHolder>(
      UserGraphHolder{pm::detector_error_model_to_user_graph(dem, correlated, pm::NUM_DISTINCT_WEIGHTS)});
  std::size_t width = std::max<std::size_t>(graph_->graph.get_num_observables(), num_observables_);
  const stim::DetectorErrorModel flat = dem.flattened();
  for (std::uint64_t k = 0; k < num_observables_; k++) {
    auto split = std::make_unique<SplitBoundaryGraph>();
    split->side = cut_sides(flat, num_detectors_, k);
    split->boundary = num_detectors_;
    split->graph = pm::detector_error_model_to_user_graph(
        split_boundary(flat, split->side, k, split->boundary), correlated, pm::NUM_DISTINCT_WEIGHTS);
    width = std::max(width, split->graph.get_num_observables());
    split_.push_back(std::move(split));
  }
  // Built now, so that the first batch does not pay for them.
  auto build = [this](pm::UserGraph& graph) {
    if (correlated_) {
      graph.get_mwpm_with_search_graph();
    } else {
      graph.get_mwpm();
    }
  };
  build(graph_->graph);
  for (auto& split : split_) build(split->graph);
  observables_.resize(width);
  forced_observables_.resize(width);
  gaps_.resize(num_observables_);
}

GapMatching::~GapMatching() = default;

std::uint64_t GapMatching::num_detectors() const { return num_detectors_; }
std::uint64_t GapMatching::num_observables() const { return num_observables_; }

void GapMatching::decode_events() {
  const double weight = decode_weighted(graph_->graph, correlated_, events_, observables_);
  for (std::uint64_t k = 0; k < num_observables_; k++) {
    const std::uint8_t other = observables_[k] ^ 1;
    split_[k]->force(events_, other, forced_events_);
    const double forced = decode_weighted(split_[k]->graph, correlated_, forced_events_, forced_observables_);
    if (forced_observables_[k] != other) {
      throw std::logic_error("the split boundary of observable L" + std::to_string(k) + " did not force its class");
    }
    gaps_[k] = std::abs(forced - weight);
  }
}

void GapMatching::decode_packed(
    rust::Slice<const std::uint8_t> shots,
    std::size_t num_shots,
    rust::Slice<std::uint8_t> predictions,
    rust::Slice<double> gaps) {
  const std::size_t stride = (num_detectors_ + 7) / 8;
  const std::size_t out_stride = (num_observables_ + 7) / 8;
  check_batch(shots.size(), predictions.size(), num_shots, stride, out_stride);
  if (gaps.size() != num_shots * num_observables_) {
    throw std::invalid_argument(
        "got room for " + std::to_string(gaps.size()) + " gaps for " + std::to_string(num_shots) + " shots of " +
        std::to_string(num_observables_) + " observables");
  }
  const std::uint8_t* row = shots.data();
  std::uint8_t* out = predictions.data();
  double* out_gaps = gaps.data();
  for (std::size_t s = 0; s < num_shots; s++, row += stride, out += out_stride, out_gaps += num_observables_) {
    unpack_events(row, s, num_detectors_, events_);
    const std::vector<std::uint8_t>* observables = &observables_;
    const std::vector<double>* shot_gaps = &gaps_;
    if (events_.empty()) {
      // Shots with no events are common at low noise, and all decode alike.
      if (!quiet_known_) {
        decode_events();
        quiet_observables_ = observables_;
        quiet_gaps_ = gaps_;
        quiet_known_ = true;
      }
      observables = &quiet_observables_;
      shot_gaps = &quiet_gaps_;
    } else {
      decode_events();
    }
    pack_observables(observables->data(), num_observables_, out);
    std::copy(shot_gaps->begin(), shot_gaps->end(), out_gaps);
  }
}

std::unique_ptr<GapMatching> new_gap_matching(rust::Str dem_text, bool correlated) {
  return std::make_unique<GapMatching>(dem_text, correlated);
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
