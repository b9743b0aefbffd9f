#include <algorithm>
#include <cmath>
#include <map>

#include <fmt/format.h>

#include "flexsp/scheduler/plan.hpp"

namespace flexsp::scheduler {

namespace {

/// A fill colour per SP degree (powers of two get distinct hues; others fall between).
std::string colour_of(int degree) {
  static const char* palette[] = {"#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d"};
  int k = 0;
  while ((1 << (k + 1)) <= degree && k < 7) ++k;
  return palette[k];
}

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

}  // namespace

std::string plan_to_svg(const plan& p, std::span<const std::int64_t> lengths) {
  constexpr double kLeft = 70, kRight = 20, kTop = 50, kBottom = 70, kWidth = 960;
  const int n = std::max(1, p.devices);
  const double row = n <= 16 ? 22 : n <= 64 ? 9 : 4;
  const double plot_h = row * n, plot_w = kWidth - kLeft - kRight;
  const double height = kTop + plot_h + kBottom;
  double total = 0;
  for (const auto& mb : p.micro_batches) total += mb.predicted_ms;
  total = std::max(total, 1e-9);
  const double scale = plot_w / total;
  std::string out = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{:.0f}\" font-family=\"sans-serif\" "
      "font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"20\" font-size=\"14\">{}: {} micro-batches on {} devices, predicted {:.1f} ms (lower "
      "bound {:.1f} ms, gap {:.1f}%)</text>\n",
      kWidth, height, kLeft, escape(p.strategy), p.micro_batches.size(), p.devices, p.predicted_ms, p.lower_bound_ms,
      100 * p.gap());
  double t = 0;
  std::map<int, bool> degrees;
  for (std::size_t m = 0; m < p.micro_batches.size(); ++m) {
    const auto& mb = p.micro_batches[m];
    const double x0 = kLeft + t * scale;
    out += fmt::format("<line x1=\"{:.1f}\" y1=\"{}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#999\" stroke-dasharray=\"3,3\"/>\n",
                       x0, kTop - 8, x0, kTop + plot_h);
    out += fmt::format("<text x=\"{:.1f}\" y=\"{}\" fill=\"#555\">mb {}</text>\n", x0 + 2, kTop - 10, m);
    for (const auto& g : mb.groups) {
      if (g.sequences.empty()) continue;
      degrees[g.degree] = true;
      std::int64_t tokens = 0;
      for (int q : g.sequences)
        if (q >= 0 && static_cast<std::size_t>(q) < lengths.size()) tokens += lengths[static_cast<std::size_t>(q)];
      const double w = std::max(1.0, g.predicted_ms * scale);
      const auto title = fmt::format("micro-batch {}: SP degree {}, {} sequences{}, predicted {:.2f} ms, devices {}", m,
                                     g.degree, g.sequences.size(),
                                     lengths.empty() ? std::string{} : fmt::format(" ({} tokens)", tokens),
                                     g.predicted_ms, fmt::join(g.devices, ","));
      for (int d : g.devices) {
        const double y = kTop + row * d;
        out += fmt::format(
            "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\" stroke=\"white\" "
            "stroke-width=\"0.5\" class=\"group\" data-degree=\"{}\"><title>{}</title></rect>\n",
            x0, y, w, row, colour_of(g.degree), g.degree, escape(title));
      }
      if (row >= 9 && w > 30) {
        const int first = g.devices.empty() ? 0 : *std::min_element(g.devices.begin(), g.devices.end());
        out += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" fill=\"white\" font-size=\"{}\">SP{} x{}</text>\n", x0 + 3,
                           kTop + row * first + row * 0.75, row >= 18 ? 10 : 7, g.degree, g.sequences.size());
      }
    }
    t += mb.predicted_ms;
  }
  // Axes: devices down, time across.
  out += fmt::format("<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"black\"/>\n", kLeft,
                     kTop + plot_h, kLeft + plot_w, kTop + plot_h);
  for (int k = 0; k <= 5; ++k) {
    const double x = kLeft + plot_w * k / 5;
    out += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{:.0f} ms</text>\n", x, kTop + plot_h + 16,
                       total * k / 5);
  }
  const int step = n <= 16 ? 1 : n <= 64 ? 8 : 32;
  for (int d = 0; d < n; d += step)
    out += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">dev {}</text>\n", kLeft - 6,
                       kTop + row * d + std::min(row, 12.0) * 0.8, d);
  double lx = kLeft;
  for (const auto& [degree, _] : degrees) {
    out += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.1f}\" "
                       "y=\"{:.1f}\">SP degree {}</text>\n",
                       lx, height - 24, colour_of(degree), lx + 14, height - 15, degree);
    lx += 100;
  }
  out += "</svg>\n";
  return out;
}

std::string strategies_to_svg(std::span<const std::pair<std::string, double>> totals, const std::string& title) {
  constexpr double kLeft = 110, kTop = 40, kBar = 26, kWidth = 720;
  double top = 1e-9;
  for (const auto& [_, v] : totals) top = std::max(top, v);
  const double height = kTop + kBar * static_cast<double>(totals.size()) + 30;
  std::string out = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{:.0f}\" font-family=\"sans-serif\" "
      "font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" "
      "font-size=\"14\">{}</text>\n",
      kWidth, height, escape(title));
  const double base = totals.empty() ? 1 : totals.front().second;
  for (std::size_t i = 0; i < totals.size(); ++i) {
    const auto& [name, v] = totals[i];
    const double y = kTop + kBar * static_cast<double>(i);
    const double w = (kWidth - kLeft - 140) * v / top;
    out += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n", kLeft - 8, y + 16, escape(name));
    out += fmt::format("<rect x=\"{}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{}\" fill=\"{}\"/>\n", kLeft, y + 4, w,
                       kBar - 8, i == 0 ? "#4c78a8" : "#bab0ac");
    out += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\">{:.0f} ms ({:.2f}x)</text>\n", kLeft + w + 6, y + 16, v,
                       base > 0 ? v / base : 0.0);
  }
  out += "</svg>\n";
  return out;
}

}  // namespace flexsp::scheduler
