// PyMatching's sparse-blossom sources, compiled into the translation unit
// that includes this file (matching.cc, and only it), inside an anonymous
// namespace.
//
// Why: the pymatching-cxx crate compiles each PyMatching source on its own,
// position-independent, with default visibility. The compiler may then
// neither inline a call into another source file nor, since a shared
// library's symbols can be interposed, into a global function of the same
// file. PyMatching's Python wheel is one pybind11 module, which pybind11's
// CMake builds with hidden symbols and link-time optimisation; it decoded
// the same shots about 10% faster than the pymatching-cxx build (correlated
// matching, SI1000 d = 5 to 9), and level with this one. Here the whole of
// PyMatching is one translation unit with internal linkage, so the compiler
// sees every call and every caller, as link-time optimisation does, with
// any compiler and no extra build step. The anonymous namespace also keeps
// these symbols apart from the pymatching-cxx crate's copy, which the
// decoder's tests link (through the `pymatching` crate) to check results
// against, so the two cannot clash.
//
// The standard headers and Stim that PyMatching includes are included first,
// outside the namespace, so that PyMatching's own `#include`s of them are
// no-ops. The list of sources is pymatching-cxx 0.1.0's
// (vendor/pymatching_source_files.txt, plus the two driver files its bridge
// compiles).
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iostream>
#include <iterator>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "stim.h"

namespace {

#include "pymatching/rand/rand_gen.cc"
#include "pymatching/sparse_blossom/driver/mwpm_decoding.cc"
#include "pymatching/sparse_blossom/driver/user_graph.cc"
#include "pymatching/sparse_blossom/flooder/detector_node.cc"
#include "pymatching/sparse_blossom/flooder/graph.cc"
#include "pymatching/sparse_blossom/flooder/graph_fill_region.cc"
#include "pymatching/sparse_blossom/flooder/graph_flooder.cc"
#include "pymatching/sparse_blossom/flooder/match.cc"
#include "pymatching/sparse_blossom/flooder_matcher_interop/compressed_edge.cc"
#include "pymatching/sparse_blossom/flooder_matcher_interop/mwpm_event.cc"
#include "pymatching/sparse_blossom/flooder_matcher_interop/region_edge.cc"
#include "pymatching/sparse_blossom/matcher/alternating_tree.cc"
#include "pymatching/sparse_blossom/matcher/mwpm.cc"
#include "pymatching/sparse_blossom/search/search_detector_node.cc"
#include "pymatching/sparse_blossom/search/search_flooder.cc"
// graph.cc and search_graph.cc each define a file-local `convert_rule`.
#define convert_rule search_graph_convert_rule
#include "pymatching/sparse_blossom/search/search_graph.cc"
#undef convert_rule
#include "pymatching/sparse_blossom/tracker/flood_check_event.cc"

}  // namespace
