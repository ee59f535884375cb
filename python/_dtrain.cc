// _dtrain: the C++ side of dtrain's Python package (python/dtrain/). Binds the group, the
// reducers behind a BucketStream (what a DDP comm hook feeds), and a store adapter so a group can
// meet in torch.distributed's own store. Built with pybind11 against dtrain_core only: no LibTorch
// and no torch Python library; tensors arrive as (address, length) of contiguous float32 memory.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "dtrain/comm/group.h"
#include "dtrain/comm/rendezvous.h"
#include "dtrain/common/error.h"
#include "dtrain/reduce/bucket_stream.h"
#include "dtrain/reduce/reducer.h"

namespace py = pybind11;

namespace dtrain::python {
namespace {

// A dtrain Store over a Python object with torch.distributed.Store's methods (set, get, check,
// delete_key). Called from the group's rendezvous with the GIL released; takes it per call.
class PythonStore : public comm::Store {
 public:
  explicit PythonStore(py::object store) : store_(std::move(store)) {}
  ~PythonStore() override {
    if (Py_IsInitialized()) {
      py::gil_scoped_acquire gil;
      store_ = py::object();
    } else {
      store_.release();  // the interpreter is gone: nothing left to release it to
    }
  }
  void set(const std::string& key, const std::vector<char>& data) override {
    py::gil_scoped_acquire gil;
    store_.attr("set")(key, py::bytes(data.data(), data.size()));
  }
  std::vector<char> get(const std::string& key) override {
    wait({key});
    auto v = try_get(key);
    if (!v) throw IoError(detail::concat("store: key ", key, " vanished after it appeared"));
    return *v;
  }
  std::optional<std::vector<char>> try_get(const std::string& key) override {
    py::gil_scoped_acquire gil;
    if (!store_.attr("check")(std::vector<std::string>{key}).cast<bool>()) return std::nullopt;
    std::string s = store_.attr("get")(key).cast<py::bytes>();
    return std::vector<char>(s.begin(), s.end());
  }
  bool check(const std::vector<std::string>& keys) override {
    py::gil_scoped_acquire gil;
    return store_.attr("check")(keys).cast<bool>();
  }
  void remove(const std::vector<std::string>& keys) override {
    py::gil_scoped_acquire gil;
    for (const auto& k : keys) {
      try {
        store_.attr("delete_key")(k);
      } catch (const py::error_already_set&) {
        // Cleanup only: a store without delete_key keeps the keys (they are recognised as an
        // earlier job's, see rendezvous.h).
      }
    }
  }

 private:
  py::object store_;
};

// Drops a reference to a group without the GIL when this thread holds it: the last one closes the
// group, which waits (seconds, at worst) for its peers to finish, and no Python thread, the hooks'
// worker included, must be stalled meanwhile.
void release(std::shared_ptr<comm::Group>& group) {
  if (Py_IsInitialized() && PyGILState_Check()) {
    py::gil_scoped_release nogil;
    group.reset();
  } else {
    group.reset();
  }
}

// The group as Python holds it.
struct PyGroup {
  std::shared_ptr<comm::Group> group;
  ~PyGroup() { release(group); }
};

// A stream and the group it uses, kept alive together.
struct Stream {
  std::shared_ptr<comm::Group> group;
  std::unique_ptr<reduce::BucketStream> stream;
  Stream(std::shared_ptr<comm::Group> g, const std::string& spec, uint64_t start_step)
      : group(std::move(g)),
        stream(std::make_unique<reduce::BucketStream>(*group, spec, start_step)) {}
  ~Stream() {
    stream.reset();
    release(group);
  }
};

std::unique_ptr<PyGroup> connect(std::optional<int> rank, std::optional<int> size,
                                 const std::string& rendezvous, py::object store,
                                 const std::string& run_id, const std::string& host,
                                 const std::string& iface, double timeout_s) {
  comm::GroupOptions o;
  o.rank = rank;
  o.size = size;
  o.rendezvous = rendezvous;
  if (!store.is_none()) o.store = std::make_shared<PythonStore>(std::move(store));
  o.run_id = run_id;
  o.host = host;
  o.iface = iface;
  DT_ENFORCE(timeout_s > 0, "timeout must be positive, got ", timeout_s, " s");
  o.timeout = comm::Millis(static_cast<int64_t>(timeout_s * 1000));
  o = comm::with_environment(std::move(o));
  py::gil_scoped_release nogil;
  return std::make_unique<PyGroup>(PyGroup{comm::Group::connect(o)});
}

}  // namespace
}  // namespace dtrain::python

PYBIND11_MODULE(_dtrain, m) {
  using namespace dtrain;
  using python::PyGroup;
  using python::Stream;
  m.doc() = "dtrain's group and reducers (the C++ side of the dtrain package)";
  m.attr("__version__") = comm::kVersion;

  // dtrain's errors as the Python exceptions a caller would catch: a bad spec or argument is a
  // ValueError, a deadline a TimeoutError, the rest a RuntimeError; the message is dtrain's.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const TimeoutError& e) {
      PyErr_SetString(PyExc_TimeoutError, e.what());
    }
  });

  py::class_<PyGroup>(m, "Group")
      .def(py::init(&python::connect), py::arg("rank") = py::none(), py::arg("size") = py::none(),
           py::arg("rendezvous") = "", py::arg("store") = py::none(), py::arg("run_id") = "",
           py::arg("host") = "", py::arg("iface") = "", py::arg("timeout") = 60.0,
           "Joins the group: rank and size from the arguments or the launcher's environment, "
           "meeting at `rendezvous` (file:///dir or redis://host:port) or in `store` (an object "
           "with torch.distributed.Store's set/get/check/delete_key)")
      .def_property_readonly("rank", [](const PyGroup& g) { return g.group->rank(); })
      .def_property_readonly("size", [](const PyGroup& g) { return g.group->size(); })
      .def("__repr__", [](const PyGroup& g) {
        return detail::concat("<dtrain.Group rank ", g.group->rank(), " of ", g.group->size(), ">");
      });

  py::class_<Stream>(m, "BucketStream")
      .def(py::init([](const PyGroup& g, const std::string& spec, uint64_t start_step) {
             return std::make_unique<Stream>(g.group, spec, start_step);
           }),
           py::arg("group").none(false), py::arg("spec"), py::arg("start_step") = 0)
      .def(
          "reduce",
          [](Stream& s, size_t index, uintptr_t address, size_t numel,
             std::vector<std::vector<int64_t>> shapes, bool last) {
            std::vector<reduce::TensorSlot> tensors;  // element counts from the shapes
            for (auto& shape : shapes) tensors.push_back({"", std::move(shape), 0, 0});
            DT_ENFORCE(address != 0 || numel == 0, "bucket ", index, ": null buffer");
            py::gil_scoped_release nogil;
            s.stream->reduce(index, std::span<float>(reinterpret_cast<float*>(address), numel),
                             std::move(tensors), last);
          },
          py::arg("index"), py::arg("address"), py::arg("numel"), py::arg("shapes"),
          py::arg("last"),
          "Averages bucket `index` in place: `numel` contiguous float32 at `address` (a "
          "tensor's data_ptr()), holding tensors of `shapes`, `last` on the step's final bucket")
      .def_property_readonly("name", [](const Stream& s) { return s.stream->reducer().name(); })
      .def_property_readonly("steps", [](const Stream& s) { return s.stream->steps(); })
      .def_property_readonly("learning_steps",
                             [](const Stream& s) { return s.stream->learning_steps(); })
      .def_property_readonly("bytes_sent", [](const Stream& s) { return s.stream->bytes_sent(); })
      .def_property_readonly("bytes_received",
                             [](const Stream& s) { return s.stream->bytes_received(); })
      .def("step_metrics", [](const Stream& s) { return s.stream->reducer().step_metrics(); });

  m.def("reducer_names", &reduce::reducer_names, "The --reduce names dtrain knows");
  m.def("validate_spec", &reduce::validate_reducer_spec, py::arg("spec"),
        "Raises ValueError with dtrain's message unless `spec` is a valid --reduce spec");
}
