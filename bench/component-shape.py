#!/usr/bin/env python3
"""What instantiating a flow component costs in parts: its core modules, the
core instances it creates, each module's imports, data segments and start
function (docs/BENCHMARKS.md, "Performance III").

    bench/component-shape.py target/wasm32-wasip2/release/wsflow_example_echo.wasm ...

Reads the component binary format directly (no dependencies). A core
instance entry is either an instantiation of a core module (the costly
kind) or a bag of exports that feeds one (cheap); both are counted.
"""

import sys


def leb(data, at):
    """An unsigned LEB128 number at `at`; returns (value, next offset)."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def name(data, at):
    length, at = leb(data, at)
    return data[at : at + length].decode(), at + length


def sections(data, at=8):
    """(id, start, end) of each section after the 8-byte preamble."""
    while at < len(data):
        section_id = data[at]
        size, at = leb(data, at + 1)
        yield section_id, at, at + size
        at += size


def skip_limits(data, at):
    flags = data[at]
    _, at = leb(data, at + 1)
    if flags & 1:
        _, at = leb(data, at)
    return at


def module_shape(module):
    """Imports, exports, data bytes and whether a start function runs."""
    imports, exports, data_bytes, start = [], [], 0, False
    for section_id, begin, end in sections(module):
        if section_id == 2:  # imports
            count, at = leb(module, begin)
            for _ in range(count):
                space, at = name(module, at)
                field, at = name(module, at)
                kind = module[at]
                at += 1
                if kind == 0:  # function
                    _, at = leb(module, at)
                elif kind == 1:  # table
                    at = skip_limits(module, at + 1)
                elif kind == 2:  # memory
                    at = skip_limits(module, at)
                elif kind == 3:  # global
                    at += 2
                else:
                    break
                imports.append(f"{space}#{field}")
        elif section_id == 7:  # exports
            count, at = leb(module, begin)
            for _ in range(count):
                field, at = name(module, at)
                _, at = leb(module, at + 1)
                exports.append(field)
        elif section_id == 8:
            start = True
        elif section_id == 11:
            data_bytes += end - begin
    return imports, exports, data_bytes, start


def main(paths):
    for path in paths:
        component = open(path, "rb").read()
        modules, instantiations, export_bags = [], 0, 0
        for section_id, begin, end in sections(component):
            if section_id == 1:  # a core module
                modules.append(module_shape(component[begin:end]) + (end - begin,))
            elif section_id == 2:  # core instances
                count, at = leb(component, begin)
                for _ in range(count):
                    # 0x00: instantiate a module (module index, named
                    # arguments); 0x01: a bag of exports (named items).
                    kind = component[at]
                    at += 1
                    if kind == 0:
                        instantiations += 1
                        _, at = leb(component, at)
                        args, at = leb(component, at)
                        for _ in range(args):
                            _, at = name(component, at)
                            at += 1
                            _, at = leb(component, at)
                    else:
                        export_bags += 1
                        items, at = leb(component, at)
                        for _ in range(items):
                            _, at = name(component, at)
                            at += 1
                            _, at = leb(component, at)
        print(path)
        print(
            f"  core modules: {len(modules)}; core instances: {instantiations} "
            f"instantiated, {export_bags} bags of imports"
        )
        for index, (imports, exports, data_bytes, start, size) in enumerate(modules):
            print(
                f"  module {index}: {size} bytes, {len(imports)} imports, "
                f"{len(exports)} exports, {data_bytes} bytes of data segments, "
                f"start function: {'yes' if start else 'no'}"
            )
            initialize = "_initialize" in exports
            if initialize:
                print("    exports _initialize (run at instantiation)")
        main_imports = modules[0][0] if modules else []
        for field in main_imports:
            print(f"    imports {field}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
