"""The language host for a local program: what `pulumi up` runs when no `--client` is given.

The real CLI starts `pulumi-language-python`, which runs the project's `main` in the
project's interpreter. The stand-in runs this script in that interpreter instead: it
serves the SDK's language host over gRPC (the same service the Automation API serves for
inline programs) with the project's program, prints its port, and serves until its
standard input closes. Only the SDK is imported: the script runs outside the stand-in.

    python program_host.py MAIN_FILE
"""

import runpy
import sys
from concurrent import futures
from pathlib import Path


def serve(main_file: Path) -> None:
    import grpc
    from pulumi.automation._server import LanguageServer
    from pulumi.runtime.proto import language_pb2_grpc

    # As when Python runs a program file: its directory comes first on sys.path.
    sys.path.insert(0, str(main_file.parent))

    def program() -> None:
        runpy.run_path(str(main_file), run_name="__main__")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(LanguageServer(program), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    serve(Path(sys.argv[1]).resolve())
