// Runs every file of the given corpus directories through the fuzz entry point once: a
// regression check for the frame decoder that needs no libFuzzer (built with any compiler).
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  std::size_t inputs = 0;
  for (int i = 1; i < argc; ++i) {
    for (const auto& entry : std::filesystem::recursive_directory_iterator(argv[i])) {
      if (!entry.is_regular_file()) continue;
      std::ifstream in{entry.path(), std::ios::binary};
      std::vector<char> bytes{std::istreambuf_iterator<char>(in), {}};
      // Whole, and cut at every length up to 64 bytes: truncated frames of each seed.
      LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
      for (std::size_t cut = 0; cut < bytes.size() && cut < 64; ++cut)
        LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), cut);
      ++inputs;
    }
  }
  std::printf("replayed %zu corpus inputs\n", inputs);
  return inputs > 0 ? 0 : 1;
}
