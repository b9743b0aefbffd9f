// The `flexsp` Python package's native part (`flexsp._flexsp`): the planner, and the job API of a
// running cluster through the C++ job client. Blocking calls release the GIL; errors become
// flexsp.FlexspError with the C++ message.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include <nlohmann/json.hpp>

#include "flexsp/actors/client.hpp"
#include "flexsp/actors/job_client.hpp"
#include "flexsp/actors/local_cluster.hpp"
#include "flexsp/scheduler/plan.hpp"
#include "flexsp/scheduler/planner.hpp"
#include "flexsp/scheduler/profile.hpp"

namespace py = pybind11;
using namespace flexsp;

namespace {

py::object error_type;  // flexsp.FlexspError, set at import

[[noreturn]] void raise(const error& e) {
  PyErr_SetString(error_type.ptr(), e.to_string().c_str());
  throw py::error_already_set();
}

template <class T>
T unwrap(expected<T> r) {
  if (!r) raise(r.error());
  return std::move(*r);
}

void unwrap(expected<void> r) {
  if (!r) raise(r.error());
}

/// JSON text -> Python objects (through the json module: dicts, lists, numbers, strings).
py::object from_json(const std::string& text) { return py::module_::import("json").attr("loads")(text); }

py::dict info_dict(const actors::job_info& i) { return from_json(actors::job_info_to_json(i)); }

/// A plan, with its groups as Python objects and its pictures.
struct py_plan {
  scheduler::plan plan;
  std::vector<std::int64_t> lengths;
};

}  // namespace

PYBIND11_MODULE(_flexsp, m) {
  m.doc() = "flexsp native module: planner and job client";
  error_type = py::reinterpret_borrow<py::object>(PyExc_RuntimeError);
  m.def("_set_error_type", [](py::object t) { error_type = std::move(t); });

  py::class_<scheduler::sp_group>(m, "Group")
      .def_readonly("degree", &scheduler::sp_group::degree)
      .def_readonly("devices", &scheduler::sp_group::devices)
      .def_readonly("sequences", &scheduler::sp_group::sequences)
      .def_readonly("predicted_ms", &scheduler::sp_group::predicted_ms)
      .def_readonly("memory_mb", &scheduler::sp_group::memory_mb)
      .def("__repr__", [](const scheduler::sp_group& g) {
        return "<Group degree=" + std::to_string(g.degree) + " sequences=" + std::to_string(g.sequences.size()) +
               " predicted_ms=" + std::to_string(g.predicted_ms) + ">";
      });

  py::class_<py_plan>(m, "Plan")
      .def_property_readonly("strategy", [](const py_plan& p) { return p.plan.strategy; })
      .def_property_readonly("devices", [](const py_plan& p) { return p.plan.devices; })
      .def_property_readonly("predicted_ms", [](const py_plan& p) { return p.plan.predicted_ms; })
      .def_property_readonly("lower_bound_ms", [](const py_plan& p) { return p.plan.lower_bound_ms; })
      .def_property_readonly("gap", [](const py_plan& p) { return p.plan.gap(); })
      .def_property_readonly("solve_ms", [](const py_plan& p) { return p.plan.solve_ms; })
      .def_property_readonly("status", [](const py_plan& p) { return p.plan.status; })
      .def_property_readonly("micro_batches",
                             [](const py_plan& p) {
                               std::vector<std::vector<scheduler::sp_group>> out;
                               for (const auto& mb : p.plan.micro_batches) out.push_back(mb.groups);
                               return out;
                             })
      .def("to_json", [](const py_plan& p) { return from_json(scheduler::plan_to_json(p.plan)); })
      .def("to_svg", [](const py_plan& p) { return scheduler::plan_to_svg(p.plan, p.lengths); })
      .def("__repr__", [](const py_plan& p) {
        return "<Plan " + p.plan.strategy + " micro_batches=" + std::to_string(p.plan.micro_batches.size()) +
               " predicted_ms=" + std::to_string(p.plan.predicted_ms) + ">";
      });

  m.def(
      "plan",
      [](std::vector<std::int64_t> lengths, int devices, int devices_per_node, const std::string& profile,
         const std::string& strategy, double time_limit_ms, bool milp, double mem_limit_gb) {
        auto prof = unwrap(scheduler::load_profile(profile));
        if (mem_limit_gb > 0) prof.mem_limit_gb = mem_limit_gb;
        if (devices_per_node <= 0) devices_per_node = prof.devices_per_node;
        scheduler::planner_options o;
        o.strategy = strategy;
        o.time_limit_ms = time_limit_ms;
        o.use_milp = milp;
        py_plan out;
        {
          py::gil_scoped_release unlocked;
          auto pl = scheduler::planner::create(std::move(prof), scheduler::cluster{devices, devices_per_node}, o);
          if (!pl) {
            py::gil_scoped_acquire locked;
            raise(pl.error());
          }
          auto p = pl->make_plan(lengths);
          if (!p) {
            py::gil_scoped_acquire locked;
            raise(p.error());
          }
          out.plan = std::move(*p);
        }
        out.lengths = std::move(lengths);
        return out;
      },
      py::arg("lengths"), py::arg("devices") = 8, py::arg("devices_per_node") = 0, py::arg("profile") = "gpt-7b",
      py::arg("strategy") = "flexsp", py::arg("time_limit_ms") = 1000.0, py::arg("milp") = false,
      py::arg("mem_limit_gb") = 0.0);

  py::class_<actors::job_client, std::shared_ptr<actors::job_client>>(m, "_Client")
      .def("submit_json",
           [](actors::job_client& c, const std::string& spec) {
             std::string id;
             {
               py::gil_scoped_release unlocked;
               auto h = c.submit_json(spec);
               if (!h) {
                 py::gil_scoped_acquire locked;
                 raise(h.error());
               }
               id = h->id();
             }
             return id;
           })
      .def("query",
           [](actors::job_client& c, const std::string& id, std::uint64_t metrics_from, bool logs) {
             actors::job_info info;
             {
               py::gil_scoped_release unlocked;
               auto i = c.query(id, metrics_from, logs);
               if (!i) {
                 py::gil_scoped_acquire locked;
                 raise(i.error());
               }
               info = std::move(*i);
             }
             py::dict d = info_dict(info);
             py::list metrics;
             for (const auto& l : info.metrics) metrics.append(from_json(l));
             d["metrics"] = metrics;
             d["logs"] = info.logs;
             return d;
           },
           py::arg("id"), py::arg("metrics_from") = 0, py::arg("logs") = false)
      .def("wait",
           // Blocks until the job ends; the head pushes each committed step, which goes to
           // `on_metrics` (as a dict) with the GIL held. An exception there ends the wait.
           [](actors::job_client& c, const std::string& id, py::object on_metrics) {
             std::optional<py::error_already_set> raised;
             actors::job_info info;
             {
               py::gil_scoped_release unlocked;
               auto h = c.attach(id);
               if (!h) {
                 py::gil_scoped_acquire locked;
                 raise(h.error());
               }
               auto done = h->wait([&](const std::string& line) {
                 py::gil_scoped_acquire locked;
                 if (raised || on_metrics.is_none()) return;
                 try {
                   on_metrics(from_json(line));
                 } catch (py::error_already_set& e) {
                   raised.emplace(std::move(e));
                 }
               });
               if (!done) {
                 py::gil_scoped_acquire locked;
                 raise(done.error());
               }
               info = std::move(*done);
             }
             if (raised) throw std::move(*raised);
             return info_dict(info);
           },
           py::arg("id"), py::arg("on_metrics") = py::none())
      .def("cancel",
           [](actors::job_client& c, const std::string& id) {
             expected<void> r;
             {
               py::gil_scoped_release unlocked;
               r = c.cancel(id);
             }
             unwrap(std::move(r));
           })
      .def("list", [](actors::job_client& c) {
        std::vector<actors::job_info> all;
        {
          py::gil_scoped_release unlocked;
          auto l = c.list();
          if (!l) {
            py::gil_scoped_acquire locked;
            raise(l.error());
          }
          all = std::move(*l);
        }
        py::list out;
        for (const auto& i : all) out.append(info_dict(i));
        return out;
      });

  m.def(
      "_resolve",
      [](const std::string& address, const std::string& secret, const std::string& secret_file) {
        // As the CLI resolves them: the address given, FLEXSP_ADDRESS, or the cluster started on
        // this machine; the secret given, the file, the environment, or that cluster's record.
        const std::string resolved = unwrap(actors::resolve_head_address(address));
        if (!secret.empty()) return py::make_tuple(resolved, secret);
        auto bytes = unwrap(actors::resolve_cluster_secret(secret_file, resolved));
        return py::make_tuple(resolved, std::string{bytes.begin(), bytes.end()});
      },
      py::arg("address"), py::arg("secret"), py::arg("secret_file"));

  m.def(
      "_connect",
      [](const std::string& address, const std::string& secret) {
        std::shared_ptr<actors::job_client> c;
        {
          py::gil_scoped_release unlocked;
          expected<std::shared_ptr<actors::job_client>> r = [&]() -> expected<std::shared_ptr<actors::job_client>> {
            if (secret.empty()) return actors::job_client::connect(address);
            net::transport_config t;
            t.secret.assign(secret.begin(), secret.end());
            return actors::job_client::connect(address, t);
          }();
          if (!r) {
            py::gil_scoped_acquire locked;
            raise(r.error());
          }
          c = std::move(*r);
        }
        return c;
      },
      py::arg("address"), py::arg("secret") = "");

  m.def(
      "_cluster_status",
      [](const std::string& address, const std::string& secret) {
        actors::cluster_status s;
        {
          py::gil_scoped_release unlocked;
          auto ep = net::endpoint::parse(address);
          if (!ep) {
            py::gil_scoped_acquire locked;
            raise(ep.error());
          }
          net::transport_config t;
          t.secret.assign(secret.begin(), secret.end());
          auto c = actors::cluster_client::connect(*ep, t);
          if (!c) {
            py::gil_scoped_acquire locked;
            raise(c.error());
          }
          auto st = (*c)->status();
          if (!st) {
            py::gil_scoped_acquire locked;
            raise(st.error());
          }
          s = std::move(*st);
        }
        py::dict d;
        d["epoch"] = s.epoch;
        py::list nodes;
        for (const auto& n : s.nodes) {
          py::dict nd;
          nd["id"] = n.id;
          nd["address"] = n.address;
          nd["state"] = std::string{actors::to_string(n.state)};
          py::list devs;
          for (const auto& dv : n.devices) devs.append(dv.to_string());
          nd["devices"] = devs;
          nodes.append(nd);
        }
        d["nodes"] = nodes;
        return d;
      },
      py::arg("address"), py::arg("secret"));
}
