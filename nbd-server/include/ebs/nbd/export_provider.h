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

class ExportProvider {
 public:
  virtual ~ExportProvider() = default;
  virtual std::vector<ProvidedExport> List() = 0;
  virtual std::optional<ProvidedExport> Find(const std::string& name) = 0;
  // ENOENT when there is no such export; another error says why it cannot
  // be opened (the server logs it and tells the client less).
  virtual Result<OpenedExport> Open(const std::string& name) = 0;
};

}  // namespace ebs::nbd
