// Exports that are not volumes of the data directory: `ebs serve` gives the
// server one for the snapshots of its store (cli/snapshot_exports.cc). The
// server asks it on its event loops, during handshakes, so no method may
// wait for a long operation (a snapshot being taken): each answers from
// what it can read at once.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ebs/engine/block_device.h"
#include "ebs/engine/status.h"
#include "ebs/nbd/handshake.h"

namespace ebs {
class Volume;
}  // namespace ebs

namespace ebs::nbd {

struct ProvidedExport {
  ExportInfo info;
  // The volume the export shows (a snapshot's): a client that may see that
  // volume (--exports-tcp, --exports-unix, --tls-allow) may see this export
  // too, as may one allowed its own name.
  std::string volume;
};

struct OpenedExport {
  std::shared_ptr<BlockDevice> device;
  // True once the export has gone away (its snapshot deleted): the
  // connections on it end, answering what they still read with ESHUTDOWN.
  std::function<bool()> gone;
};

// One range of a dirty bitmap: changed since the bitmap's snapshot, or not.
struct DirtyExtent {
  uint64_t offset;
  uint64_t length;
  bool dirty;
};

// A dirty bitmap (qemu:dirty-bitmap:NAME) of one connection's export.
class ChangeMap {
 public:
  virtual ~ChangeMap() = default;
  // Appends extents describing [offset, offset+length) in order, at most
  // `max_extents` (the last one appended then ends before the range does),
  // neighbours of the same state merged. Called on an event loop: answers
  // from memory and the snapshot index, never waits for an operation.
  virtual Status Map(uint64_t offset, uint64_t length, std::vector<DirtyExtent>* out, size_t max_extents) = 0;
};

class ExportProvider {
 public:
  virtual ~ExportProvider() = default;
  virtual std::vector<ProvidedExport> List() = 0;
  virtual std::optional<ProvidedExport> Find(const std::string& name) = 0;
  // ENOENT when there is no such export; another error says why it cannot
  // be opened (the server logs it and tells the client less).
  virtual Result<OpenedExport> Open(const std::string& name) = 0;

  // The dirty bitmaps export `name` (a volume's or a provided one) offers.
  virtual std::vector<std::string> Bitmaps(const std::string& /*name*/) { return {}; }
  // Opens dirty bitmap `bitmap` of export `name` for a connection; `volume`
  // is the volume it has open when the export is one (null otherwise).
  virtual Result<std::unique_ptr<ChangeMap>> OpenBitmap(const std::string& name, ebs::Volume* /*volume*/,
                                                        const std::string& bitmap) {
    return Status::NotFound("export '" + name + "' has no dirty bitmap '" + bitmap + "'");
  }
};

}  // namespace ebs::nbd
