#include "flexsp/scheduler/synthetic.hpp"

#include <array>
#include <cmath>
#include <random>

namespace flexsp::scheduler {
namespace {

// (normal quantile z, length) anchors of the Wikipedia length sample published with FlexSP.
constexpr std::array<std::pair<double, double>, 23> kWikipedia{{
    {-4.7534, 1},    {-3.7190, 6},     {-3.0902, 17},    {-2.3263, 39},     {-1.6449, 67},      {-1.2816, 87},
    {-0.8416, 122},  {-0.5244, 171},   {-0.2533, 243},   {0.0, 347},        {0.2533, 472},      {0.5244, 685},
    {0.8416, 1092},  {1.2816, 2112},   {1.6449, 3721},   {2.0537, 7088},    {2.3263, 10921},    {2.5758, 15987},
    {3.0902, 37367}, {3.2905, 51517},  {3.7190, 102060}, {4.2649, 235328},  {4.7534, 1823777},
}};

double quantile(double z) {
  const auto& a = kWikipedia;
  if (z <= a.front().first) return a.front().second;
  if (z >= a.back().first) return a.back().second;
  std::size_t i = 1;
  while (a[i].first < z) ++i;
  const double t = (z - a[i - 1].first) / (a[i].first - a[i - 1].first);
  return std::exp(std::log(a[i - 1].second) + t * (std::log(a[i].second) - std::log(a[i - 1].second)));
}

// Uniform in (0, 1) from 53 random bits; std distributions differ between standard libraries.
double uniform01(std::mt19937_64& rng) { return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53; }

}  // namespace

std::vector<std::string> synthetic_kinds() { return {"wikipedia"}; }

expected<std::vector<std::int64_t>> synthetic_lengths(std::size_t count, std::uint64_t seed, std::string_view kind) {
  if (kind != "wikipedia")
    return make_error(errc::invalid_argument, "unknown synthetic length distribution '{}' (known: wikipedia)", kind);
  std::mt19937_64 rng{seed};
  std::vector<std::int64_t> out;
  out.reserve(count);
  constexpr double two_pi = 6.283185307179586;
  while (out.size() < count) {
    // Box-Muller gives two normal draws per pair of uniforms
    const double r = std::sqrt(-2.0 * std::log(uniform01(rng)));
    const double phi = two_pi * uniform01(rng);
    for (double z : {r * std::cos(phi), r * std::sin(phi)}) {
      if (out.size() == count) break;
      out.push_back(std::max<std::int64_t>(1, std::llround(quantile(z))));
    }
  }
  return out;
}

}  // namespace flexsp::scheduler
