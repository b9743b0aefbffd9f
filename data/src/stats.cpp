#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "flexsp/data/dataset.hpp"

namespace flexsp::data {

length_stats stats_of(std::span<const std::uint64_t> lengths) {
  length_stats s;
  std::vector<std::uint64_t> sorted{lengths.begin(), lengths.end()};
  std::sort(sorted.begin(), sorted.end());
  s.documents = sorted.size();
  for (auto l : sorted) s.tokens += l;
  if (sorted.empty()) return s;
  s.mean = static_cast<double>(s.tokens) / static_cast<double>(s.documents);
  for (double p : {50.0, 90.0, 99.0, 99.9, 100.0}) {
    const auto at = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size()))) - 1;
    s.percentiles.emplace_back(p, sorted[std::min(at, sorted.size() - 1)]);
  }
  for (std::uint64_t t : {4096u, 8192u, 32768u, 131072u}) {
    std::uint64_t above = 0;
    for (auto l : sorted)
      if (l > t) above += l;
    s.tokens_above.emplace_back(t, s.tokens ? static_cast<double>(above) / static_cast<double>(s.tokens) : 0.0);
  }
  // log2 bins from 1 up to the longest document.
  std::uint64_t from = 1;
  while (from <= sorted.back()) {
    s.histogram.push_back({from, 0, 0});
    from *= 2;
  }
  if (s.histogram.empty()) s.histogram.push_back({1, 0, 0});
  for (auto l : sorted) {
    std::size_t b = 0;
    while (b + 1 < s.histogram.size() && s.histogram[b + 1].from <= l) ++b;
    s.histogram[b].documents += 1;
    s.histogram[b].tokens += l;
  }
  return s;
}

length_stats stats_of(const dataset& d) {
  std::vector<std::uint64_t> lengths(d.documents());
  for (std::uint64_t i = 0; i < lengths.size(); ++i) lengths[i] = d.length(i);
  return stats_of(lengths);
}

std::string stats_svg(const length_stats& s, const std::string& title) {
  constexpr double W = 720, H = 360, L = 60, R = 20, T = 40, B = 60;
  const double plot_w = W - L - R, plot_h = H - T - B;
  const auto n = std::max<std::size_t>(1, s.histogram.size());
  double top = 0;
  for (const auto& b : s.histogram) {
    top = std::max(top, s.documents ? static_cast<double>(b.documents) / static_cast<double>(s.documents) : 0.0);
    top = std::max(top, s.tokens ? static_cast<double>(b.tokens) / static_cast<double>(s.tokens) : 0.0);
  }
  top = std::max(top, 1e-9);
  std::string out = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"20\" font-size=\"14\">{}</text>\n",
      W, H, L, title);
  const double slot = plot_w / static_cast<double>(n), bar = slot * 0.4;
  for (std::size_t i = 0; i < s.histogram.size(); ++i) {
    const auto& b = s.histogram[i];
    const double docs = s.documents ? static_cast<double>(b.documents) / static_cast<double>(s.documents) : 0.0;
    const double toks = s.tokens ? static_cast<double>(b.tokens) / static_cast<double>(s.tokens) : 0.0;
    const double x = L + slot * static_cast<double>(i);
    const double hd = plot_h * docs / top, ht = plot_h * toks / top;
    out += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"#4c78a8\"/>\n",
                       x + slot * 0.1, T + plot_h - hd, bar, hd);
    out += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"#f58518\"/>\n",
                       x + slot * 0.1 + bar, T + plot_h - ht, bar, ht);
    if (i % 2 == 0) {
      const auto f = b.from;
      const auto label = f >= 1024 ? fmt::format("{}K", f / 1024) : fmt::format("{}", f);
      out += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n", x + slot * 0.5,
                         T + plot_h + 16, label);
    }
  }
  out += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n", L, T + plot_h, L + plot_w,
                     T + plot_h);
  out += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n", L, T, L, T + plot_h);
  for (int k = 0; k <= 4; ++k) {
    const double v = top * k / 4, y = T + plot_h - plot_h * k / 4;
    out += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:.0f}%</text>\n", L - 6, y + 4, 100 * v);
  }
  out += fmt::format(
      "<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">document length, tokens (log2 bins)</text>\n"
      "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"#4c78a8\"/><text x=\"{}\" y=\"{}\">share of "
      "documents</text>\n<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"#f58518\"/><text x=\"{}\" "
      "y=\"{}\">share of tokens</text>\n</svg>\n",
      L + plot_w / 2, H - 12, W - 230, 12, W - 215, 21, W - 120, 12, W - 105, 21);
  return out;
}

}  // namespace flexsp::data
