// capnpc-flexsp: a Cap'n Proto compiler plugin that turns each schema file into the C++ message
// types of the actor runtime, so that a wire message is declared once, in its schema.
//
//   capnp compile -o/path/to/capnpc-flexsp:OUTDIR --src-prefix=DIR DIR/training.capnp
//
// For `training.capnp` it writes `training.msg.hpp` beside capnpc-c++'s `training.capnp.h`:
// - per struct `FooBar` a plain C++ struct `foo_bar` (fields in ordinal order, snake_case names,
//   the schema's default values as member initialisers, memberwise ==) and a `wire_codec<foo_bar>`
//   specialisation that copies every field between the struct and its Cap'n Proto builder or
//   reader (nested structs and lists of them through their own codecs);
// - per enum `Precision` an `enum class precision` with `to_string` and `parse_precision`.
// The C++ types go into the namespace of `$Cxx.namespace` without its last `::schema` part; the
// codecs into flexsp::actors, where wire_codec lives. Data fields become std::string (bytes).
// Types imported from another schema are not generated again: that schema's `.msg.hpp` is
// included instead. Unions, groups, interfaces and AnyPointer fields are rejected with an error
// naming the field.
#include <cctype>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <capnp/schema-loader.h>
#include <capnp/schema.capnp.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>

namespace {

constexpr std::uint64_t kCxxNamespace = 0xb9c6f99ebf805f2cull;  // $Cxx.namespace

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "capnpc-flexsp: %s\n", what.c_str());
  std::exit(1);
}

std::string snake(std::string_view camel) {
  std::string out;
  for (std::size_t i = 0; i < camel.size(); ++i) {
    const char c = camel[i];
    if (std::isupper(static_cast<unsigned char>(c))) {
      if (i > 0) out.push_back('_');
      out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

/// A C++ floating literal that reads back as `v` (`digits` significant digits).
std::string float_literal(double v, int digits) {
  std::ostringstream s;
  s.precision(digits);
  s << v;
  std::string x = s.str();
  if (x.find_first_of(".e") == std::string::npos) x += ".0";
  return x;
}

std::string upper_first(std::string_view s) {
  std::string out{s};
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}

struct generator {
  capnp::SchemaLoader& loader;
  std::string types_ns;   // flexsp::actors
  std::string schema_ns;  // flexsp::actors::schema
  std::ostringstream types, codecs;
  std::set<std::uint64_t> done;
  std::uint64_t file_id = 0;            // the schema file being generated
  std::set<std::string> imports;        // other schemas' .msg.hpp this one needs

  // The schema file that declares `s`.
  capnp::Schema file_of(capnp::Schema s) {
    while (!s.getProto().isFile()) s = loader.get(s.getProto().getScopeId());
    return s;
  }
  // False (and the other schema's header noted) when `s` belongs to an imported file.
  bool local(capnp::Schema s) {
    auto f = file_of(s);
    if (f.getProto().getId() == file_id) return true;
    std::string path = f.getProto().getDisplayName().cStr();
    const auto slash = path.rfind('/');
    if (slash != std::string::npos) path = path.substr(slash + 1);
    imports.insert(path.substr(0, path.rfind(".capnp")) + ".msg.hpp");
    return false;
  }

  std::string name_of(capnp::Schema s) { return snake(s.getShortDisplayName().cStr()); }
  std::string qualified(capnp::Schema s) { return "::" + types_ns + "::" + name_of(s); }
  std::string schema_name(capnp::Schema s) { return "::" + schema_ns + "::" + std::string{s.getShortDisplayName().cStr()}; }

  std::string cxx_type(capnp::Type t, const std::string& where) {
    switch (t.which()) {
      case capnp::schema::Type::BOOL: return "bool";
      case capnp::schema::Type::INT8: return "std::int8_t";
      case capnp::schema::Type::INT16: return "std::int16_t";
      case capnp::schema::Type::INT32: return "std::int32_t";
      case capnp::schema::Type::INT64: return "std::int64_t";
      case capnp::schema::Type::UINT8: return "std::uint8_t";
      case capnp::schema::Type::UINT16: return "std::uint16_t";
      case capnp::schema::Type::UINT32: return "std::uint32_t";
      case capnp::schema::Type::UINT64: return "std::uint64_t";
      case capnp::schema::Type::FLOAT32: return "float";
      case capnp::schema::Type::FLOAT64: return "double";
      case capnp::schema::Type::TEXT: return "std::string";
      case capnp::schema::Type::DATA: return "std::string";
      case capnp::schema::Type::LIST: return "std::vector<" + cxx_type(t.asList().getElementType(), where) + ">";
      case capnp::schema::Type::ENUM: return qualified(t.asEnum());
      case capnp::schema::Type::STRUCT: return qualified(t.asStruct());
      default: fail(where + ": this field type has no C++ message form (use scalars, Text, enums, structs, lists)");
    }
  }

  std::string default_of(const capnp::StructSchema::Field& f) {
    auto slot = f.getProto().getSlot();
    auto v = slot.getDefaultValue();
    auto t = f.getType();
    switch (t.which()) {
      case capnp::schema::Type::BOOL: return v.getBool() ? " = true" : " = false";
      case capnp::schema::Type::INT8: return " = " + std::to_string(v.getInt8());
      case capnp::schema::Type::INT16: return " = " + std::to_string(v.getInt16());
      case capnp::schema::Type::INT32: return " = " + std::to_string(v.getInt32());
      case capnp::schema::Type::INT64: return " = " + std::to_string(v.getInt64());
      case capnp::schema::Type::UINT8: return " = " + std::to_string(v.getUint8());
      case capnp::schema::Type::UINT16: return " = " + std::to_string(v.getUint16());
      case capnp::schema::Type::UINT32: return " = " + std::to_string(v.getUint32());
      case capnp::schema::Type::UINT64: return " = " + std::to_string(v.getUint64());
      case capnp::schema::Type::FLOAT32: return " = " + float_literal(v.getFloat32(), 9) + "f";
      case capnp::schema::Type::FLOAT64: return " = " + float_literal(v.getFloat64(), 17);
      case capnp::schema::Type::TEXT: {
        if (!slot.getHadExplicitDefault()) return "";
        std::string x = v.getText().cStr();
        std::string q = "\"";
        for (char c : x) {
          if (c == '"' || c == '\\') q.push_back('\\');
          q.push_back(c);
        }
        return " = " + q + "\"";
      }
      case capnp::schema::Type::ENUM: {
        auto e = t.asEnum();
        auto en = e.getEnumerants()[v.getEnum()];
        return " = " + qualified(e) + "::" + snake(en.getProto().getName().cStr());
      }
      default: return "";  // structs and lists default to empty
    }
  }

  void gen_enum(capnp::EnumSchema e) {
    if (!done.insert(e.getProto().getId()).second || !local(e)) return;
    const auto name = name_of(e);
    types << "/// Schema enum " << e.getShortDisplayName().cStr() << ".\nenum class " << name << " : std::uint16_t {";
    std::string sep = " ";
    for (auto en : e.getEnumerants()) {
      types << sep << snake(en.getProto().getName().cStr());
      sep = ", ";
    }
    types << " };\n";
    types << "inline std::string_view to_string(" << name << " v) noexcept {\n  switch (v) {\n";
    for (auto en : e.getEnumerants()) {
      const auto n = snake(en.getProto().getName().cStr());
      types << "    case " << name << "::" << n << ": return \"" << n << "\";\n";
    }
    types << "  }\n  return \"?\";\n}\n";
    types << "/// The enumerant named `s`, or false.\ninline bool parse_" << name << "(std::string_view s, " << name
          << "& out) noexcept {\n";
    for (auto en : e.getEnumerants()) {
      const auto n = snake(en.getProto().getName().cStr());
      types << "  if (s == \"" << n << "\") { out = " << name << "::" << n << "; return true; }\n";
    }
    types << "  return false;\n}\n\n";
  }

  void gen_struct(capnp::StructSchema s) {
    if (!done.insert(s.getProto().getId()).second || !local(s)) return;
    const auto display = std::string{s.getShortDisplayName().cStr()};
    if (s.getUnionFields().size() > 0) fail(display + ": unions have no C++ message form");
    // Types used by the fields first.
    std::function<void(capnp::Type)> need = [&](capnp::Type t) {
      if (t.isStruct()) gen_struct(t.asStruct());
      else if (t.isEnum()) gen_enum(t.asEnum());
      else if (t.isList()) need(t.asList().getElementType());
    };
    for (auto f : s.getFields()) {
      if (f.getProto().isGroup()) fail(display + "." + f.getProto().getName().cStr() + ": groups have no C++ message form");
      need(f.getType());
    }
    const auto name = name_of(s);
    types << "/// Schema struct " << display << ".\nstruct " << name << " {\n";
    for (auto f : s.getFields()) {
      const std::string where = display + "." + f.getProto().getName().cStr();
      types << "  " << cxx_type(f.getType(), where) << " " << snake(f.getProto().getName().cStr()) << default_of(f)
            << ";\n";
    }
    types << "  friend bool operator==(const " << name << "&, const " << name << "&) = default;\n";
    types << "};\n\n";

    const auto q = qualified(s);
    codecs << "template <>\nstruct wire_codec<" << q << "> {\n  using schema = " << schema_name(s) << ";\n";
    codecs << "  static void encode([[maybe_unused]] const " << q << "& m, [[maybe_unused]] schema::Builder b) {\n";
    for (auto f : s.getFields()) {
      const std::string field = snake(f.getProto().getName().cStr());
      const std::string cap = upper_first(f.getProto().getName().cStr());
      auto t = f.getType();
      if (t.isStruct()) {
        codecs << "    wire_codec<" << qualified(t.asStruct()) << ">::encode(m." << field << ", b.init" << cap << "());\n";
      } else if (t.isEnum()) {
        codecs << "    b.set" << cap << "(static_cast<" << schema_name(t.asEnum()) << ">(m." << field << "));\n";
      } else if (t.isList()) {
        auto e = t.asList().getElementType();
        codecs << "    {\n      auto l = b.init" << cap << "(static_cast<unsigned>(m." << field << ".size()));\n";
        codecs << "      for (unsigned i = 0; i < m." << field << ".size(); ++i) ";
        if (e.isStruct())
          codecs << "wire_codec<" << qualified(e.asStruct()) << ">::encode(m." << field << "[i], l[i]);\n";
        else if (e.isEnum())
          codecs << "l.set(i, static_cast<" << schema_name(e.asEnum()) << ">(m." << field << "[i]));\n";
        else if (e.isList() || e.isData())
          fail(display + "." + f.getProto().getName().cStr() + ": lists of lists or Data have no C++ message form");
        else
          codecs << "l.set(i, m." << field << "[i]);\n";
        codecs << "    }\n";
      } else if (t.isData()) {
        codecs << "    b.set" << cap << "(kj::arrayPtr(reinterpret_cast<const kj::byte*>(m." << field << ".data()), m."
               << field << ".size()));\n";
      } else {
        codecs << "    b.set" << cap << "(m." << field << ");\n";
      }
    }
    codecs << "  }\n";
    codecs << "  static " << q << " decode([[maybe_unused]] schema::Reader r) {\n    " << q << " m;\n";
    for (auto f : s.getFields()) {
      const std::string field = snake(f.getProto().getName().cStr());
      const std::string cap = upper_first(f.getProto().getName().cStr());
      auto t = f.getType();
      if (t.isStruct()) {
        codecs << "    m." << field << " = wire_codec<" << qualified(t.asStruct()) << ">::decode(r.get" << cap << "());\n";
      } else if (t.isEnum()) {
        codecs << "    m." << field << " = static_cast<" << qualified(t.asEnum()) << ">(r.get" << cap << "());\n";
      } else if (t.isList()) {
        auto e = t.asList().getElementType();
        codecs << "    {\n      auto l = r.get" << cap << "();\n      m." << field << ".reserve(l.size());\n";
        codecs << "      for (auto x : l) m." << field << ".push_back(";
        if (e.isStruct()) codecs << "wire_codec<" << qualified(e.asStruct()) << ">::decode(x)";
        else if (e.isEnum()) codecs << "static_cast<" << qualified(e.asEnum()) << ">(x)";
        else if (e.isText()) codecs << "std::string{x.cStr()}";
        else codecs << "x";
        codecs << ");\n    }\n";
      } else if (t.isText()) {
        codecs << "    m." << field << " = r.get" << cap << "().cStr();\n";
      } else if (t.isData()) {
        codecs << "    {\n      auto d = r.get" << cap << "();\n      m." << field
               << ".assign(reinterpret_cast<const char*>(d.begin()), d.size());\n    }\n";
      } else {
        codecs << "    m." << field << " = r.get" << cap << "();\n";
      }
    }
    codecs << "    return m;\n  }\n};\n\n";
  }
};

}  // namespace

int main() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 1ull << 30;
  capnp::StreamFdMessageReader reader{0, options};
  auto request = reader.getRoot<capnp::schema::CodeGeneratorRequest>();
  capnp::SchemaLoader loader;
  for (auto node : request.getNodes()) loader.load(node);
  for (auto file : request.getRequestedFiles()) {
    auto schema = loader.get(file.getId());
    std::string ns;
    for (auto a : schema.getProto().getAnnotations())
      if (a.getId() == kCxxNamespace) ns = a.getValue().getText().cStr();
    if (ns.empty()) fail(std::string{file.getFilename().cStr()} + ": needs $Cxx.namespace(\"...::schema\")");
    const std::string suffix = "::schema";
    if (ns.size() <= suffix.size() || ns.compare(ns.size() - suffix.size(), suffix.size(), suffix) != 0)
      fail(std::string{file.getFilename().cStr()} + ": $Cxx.namespace must end in ::schema");
    generator g{loader, ns.substr(0, ns.size() - suffix.size()), ns, {}, {}, {}, file.getId(), {}};
    for (auto nested : schema.getProto().getNestedNodes()) {
      auto s = loader.get(nested.getId());
      if (s.getProto().isStruct()) g.gen_struct(s.asStruct());
      else if (s.getProto().isEnum()) g.gen_enum(s.asEnum());
    }
    std::string path = file.getFilename().cStr();  // e.g. training.capnp
    const auto slash = path.rfind('/');
    std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    base = base.substr(0, base.rfind(".capnp"));
    std::ofstream out{base + ".msg.hpp"};
    out << "// Generated by capnpc-flexsp from " << path << ": the schema's messages as C++ types and their\n"
        << "// wire codecs. Do not edit; change the schema.\n#pragma once\n\n"
        << "#include <cstdint>\n#include <string>\n#include <string_view>\n#include <vector>\n\n"
        << "#include \"flexsp/actors/wire_codec.hpp\"\n#include \"" << base << ".capnp.h\"\n";
    for (const auto& i : g.imports) out << "#include \"" << i << "\"\n";
    out << "\n"
        << "namespace " << g.types_ns << " {\n\n"
        << g.types.str() << "}  // namespace " << g.types_ns << "\n\nnamespace flexsp::actors {\n\n"
        << g.codecs.str() << "}  // namespace flexsp::actors\n";
    if (!out) fail("cannot write " + base + ".msg.hpp");
  }
  return 0;
}
