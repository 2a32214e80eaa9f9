"""Interaction lists of a complete, level-ordered octree (see ``aotfmm.tree`` and ``aotfmm.lists``).

The tree arrives as flat arrays over boxes ``0 .. n_boxes - 1``, ordered level by level:
``parent`` (-1 for the root), ``children`` (n_boxes, 8) in octant order (row of -1 for leaves),
``ijk`` (n_boxes, 3) integer coordinates of each box at its own level, ``levels``.
Two boxes are *adjacent* when their closed cubes intersect (face, edge, corner or the same box);
it is tested exactly in integer coordinates at the deepest level ``depth``.

The colleague table ``col`` (n_boxes, 27) holds, for box b and offset d = (dx, dy, dz) in
{-1, 0, 1}^3 (column ``(dx + 1) * 9 + (dy + 1) * 3 + dz + 1``), the box at ``ijk[b] + d`` on b's
level, or -1 where no such box exists. Column 13 is b itself.

The list kernels build CSR rows in two passes over the same code: ``fill == 0`` writes the row
length into ``counts[b]``; ``fill == 1`` writes the row, sorted ascending, into
``out[offsets[b]:offsets[b + 1]]``. They return 0, or -1 if a row overflowed the internal
scratch (impossible for 2:1-balanced trees, whose rows hold at most a few hundred boxes).
"""
import numpy as np

#: Capacity of the per-row scratch buffer of the list kernels.
ROW_CAP = 8192
#: Capacity of the depth-first search stack (8 entries per level suffice: 7 * depth + 8).
STACK_CAP = 1024

SIGNATURES = {
    # IN parent, IN children, IN ijk, IN levels, IN box_start, IN box_end, INOUT col (n, 27)
    "tree_colleagues": "void(i8[::1], i8[:, ::1], i8[:, ::1], i8[::1], i8, i8, i8[:, ::1])",
    # IN col, IN parent, IN children, IN ijk, IN levels, IN depth, IN box_start, IN box_end,
    # IN fill, IN offsets, OUT counts, OUT out -> status
    "lists_u": "i8(i8[:, ::1], i8[::1], i8[:, ::1], i8[:, ::1], i8[::1], i8, i8, i8, i8,"
               " i8[::1], i8[::1], i8[::1])",
    "lists_w": "i8(i8[:, ::1], i8[::1], i8[:, ::1], i8[:, ::1], i8[::1], i8, i8, i8, i8,"
               " i8[::1], i8[::1], i8[::1])",
    # IN col, IN parent, IN children, IN ijk, IN levels, IN lookup (343,), IN box_start,
    # IN box_end, IN fill, IN offsets, OUT counts, OUT out, OUT transfer -> status
    "lists_v": "i8(i8[:, ::1], i8[::1], i8[:, ::1], i8[:, ::1], i8[::1], i8[::1], i8, i8, i8,"
               " i8[::1], i8[::1], i8[::1], i8[::1])",
    # IN offsets, IN index, INOUT cursor, OUT out
    "csr_transpose": "void(i8[::1], i8[::1], i8[::1], i8[::1])",
    # IN target_octant, IN pair_row, IN pair_source, IN pair_vector, IN source_octant,
    # IN flip (8, n_vec), IN col0, IN group0, IN new_row, IN row_item, IN item_first,
    # OUT groups, OUT out_row, OUT out_source, OUT out_vector, OUT group_sources, OUT sources,
    # scratch key, src_tmp (n_pairs), mark, loc (n_src) -> distinct sources or -1
    "octant_groups": "i8(i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], i8[:, ::1], i8[::1],"
                     " i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], i8[::1],"
                     " i8[::1], i8[::1], i8[::1], i8[::1], i8[::1], i8[::1])",
}

LOCALS = {}


def tree_colleagues(parent, children, ijk, levels, box_start, box_end, col):
    """col[b, d] = box at ijk[b] + d on b's level, or -1, for box_start <= b < box_end.

    Reads the rows of the parents, which must already be filled (call level by level).
    """
    for b in range(box_start, box_end):
        p = parent[b]
        if p < 0:
            for d in range(27):
                col[b, d] = -1
            col[b, 13] = b
            continue
        n = np.int64(1) << levels[b]
        for d in range(27):
            x = ijk[b, 0] + d // 9 - 1
            y = ijk[b, 1] + (d // 3) % 3 - 1
            z = ijk[b, 2] + d % 3 - 1
            col[b, d] = -1
            if x < 0 or y < 0 or z < 0 or x >= n or y >= n or z >= n:
                continue
            px = (x >> 1) - ijk[p, 0] + 1
            py = (y >> 1) - ijk[p, 1] + 1
            pz = (z >> 1) - ijk[p, 2] + 1
            q = col[p, px * 9 + py * 3 + pz]
            if q < 0:
                continue
            if children[q, 0] < 0:
                continue
            col[b, d] = children[q, (x & 1) | ((y & 1) << 1) | ((z & 1) << 2)]
    return None


def lists_u(col, parent, children, ijk, levels, depth, box_start, box_end, fill, offsets,
            counts, out):
    """U(b), b a leaf: every leaf adjacent to b (any level), b included. Empty for other boxes."""
    buf = np.empty(ROW_CAP, np.int64)
    stack = np.empty(STACK_CAP, np.int64)
    for b in range(box_start, box_end):
        n = 0
        if children[b, 0] < 0:
            lb = levels[b]
            sb = np.int64(1) << (depth - lb)
            bx = ijk[b, 0] << (depth - lb)
            by = ijk[b, 1] << (depth - lb)
            bz = ijk[b, 2] << (depth - lb)
            nb = np.int64(1) << lb
            for d in range(27):
                c = col[b, d]
                if c >= 0:
                    if children[c, 0] < 0:
                        if n >= ROW_CAP:
                            return -1
                        buf[n] = c
                        n += 1
                        continue
                    # a finer colleague: its leaf descendants that touch b
                    top = 0
                    for o in range(8):
                        stack[top] = children[c, o]
                        top += 1
                    while top > 0:
                        top -= 1
                        x = stack[top]
                        lx = levels[x]
                        sx = np.int64(1) << (depth - lx)
                        ax = ijk[x, 0] << (depth - lx)
                        ay = ijk[x, 1] << (depth - lx)
                        az = ijk[x, 2] << (depth - lx)
                        if (ax <= bx + sb and bx <= ax + sx and ay <= by + sb and by <= ay + sx
                                and az <= bz + sb and bz <= az + sx):
                            if children[x, 0] < 0:
                                if n >= ROW_CAP:
                                    return -1
                                buf[n] = x
                                n += 1
                            else:
                                for o in range(8):
                                    stack[top] = children[x, o]
                                    top += 1
                    continue
                # no box at ijk[b] + d on b's level: the deepest existing box containing that
                # place is a coarser leaf touching b (unless the place is outside the root)
                x = ijk[b, 0] + d // 9 - 1
                y = ijk[b, 1] + (d // 3) % 3 - 1
                z = ijk[b, 2] + d % 3 - 1
                if x < 0 or y < 0 or z < 0 or x >= nb or y >= nb or z >= nb:
                    continue
                cur = b
                q = -1
                while q < 0:
                    cur = parent[cur]
                    x >>= 1
                    y >>= 1
                    z >>= 1
                    q = col[cur, (x - ijk[cur, 0] + 1) * 9 + (y - ijk[cur, 1] + 1) * 3
                            + (z - ijk[cur, 2] + 1)]
                dup = False
                for k in range(n):
                    if buf[k] == q:
                        dup = True
                        break
                if not dup:
                    if n >= ROW_CAP:
                        return -1
                    buf[n] = q
                    n += 1
            # insertion sort of the row
            for k in range(1, n):
                v = buf[k]
                m = k - 1
                while m >= 0 and buf[m] > v:
                    buf[m + 1] = buf[m]
                    m -= 1
                buf[m + 1] = v
        if fill:
            base = offsets[b]
            for k in range(n):
                out[base + k] = buf[k]
        else:
            counts[b] = n
    return 0


def lists_w(col, parent, children, ijk, levels, depth, box_start, box_end, fill, offsets,
            counts, out):
    """W(b), b a leaf: descendants of b's colleagues not adjacent to b whose parent is adjacent."""
    buf = np.empty(ROW_CAP, np.int64)
    stack = np.empty(STACK_CAP, np.int64)
    for b in range(box_start, box_end):
        n = 0
        if children[b, 0] < 0:
            lb = levels[b]
            sb = np.int64(1) << (depth - lb)
            bx = ijk[b, 0] << (depth - lb)
            by = ijk[b, 1] << (depth - lb)
            bz = ijk[b, 2] << (depth - lb)
            for d in range(27):
                c = col[b, d]
                if d == 13 or c < 0:
                    continue
                if children[c, 0] < 0:
                    continue
                top = 0
                for o in range(8):
                    stack[top] = children[c, o]
                    top += 1
                while top > 0:
                    top -= 1
                    x = stack[top]
                    lx = levels[x]
                    sx = np.int64(1) << (depth - lx)
                    ax = ijk[x, 0] << (depth - lx)
                    ay = ijk[x, 1] << (depth - lx)
                    az = ijk[x, 2] << (depth - lx)
                    if (ax <= bx + sb and bx <= ax + sx and ay <= by + sb and by <= ay + sx
                            and az <= bz + sb and bz <= az + sx):
                        if children[x, 0] >= 0:
                            for o in range(8):
                                stack[top] = children[x, o]
                                top += 1
                    else:
                        if n >= ROW_CAP:
                            return -1
                        buf[n] = x
                        n += 1
            for k in range(1, n):
                v = buf[k]
                m = k - 1
                while m >= 0 and buf[m] > v:
                    buf[m + 1] = buf[m]
                    m -= 1
                buf[m + 1] = v
        if fill:
            base = offsets[b]
            for k in range(n):
                out[base + k] = buf[k]
        else:
            counts[b] = n
    return 0


def lists_v(col, parent, children, ijk, levels, lookup, box_start, box_end, fill, offsets,
            counts, out, transfer):
    """V(b), level >= 2: children of the colleagues of b's parent that are not adjacent to b.

    transfer[k] = lookup[(tx + 3) * 49 + (ty + 3) * 7 + tz + 3] with t = ijk[source] - ijk[b].
    Children of one box have consecutive indices and boxes of a level are ordered by their
    parents, so visiting the parent's colleagues in ascending order gives a sorted row.
    """
    cols = np.empty(27, np.int64)
    for b in range(box_start, box_end):
        n = 0
        base = 0
        if fill:
            base = offsets[b]
        if levels[b] >= 2:
            p = parent[b]
            m = 0
            for d in range(27):
                c = col[p, d]
                if c >= 0 and children[c, 0] >= 0:
                    k = m
                    while k > 0 and cols[k - 1] > c:
                        cols[k] = cols[k - 1]
                        k -= 1
                    cols[k] = c
                    m += 1
            bx = ijk[b, 0]
            by = ijk[b, 1]
            bz = ijk[b, 2]
            for k in range(m):
                c = cols[k]
                for o in range(8):
                    x = children[c, o]
                    tx = ijk[x, 0] - bx
                    ty = ijk[x, 1] - by
                    tz = ijk[x, 2] - bz
                    if tx > 1 or tx < -1 or ty > 1 or ty < -1 or tz > 1 or tz < -1:
                        if fill:
                            out[base + n] = x
                            transfer[base + n] = lookup[(tx + 3) * 49 + (ty + 3) * 7 + tz + 3]
                        n += 1
        if not fill:
            counts[b] = n
    return 0


def csr_transpose(offsets, index, cursor, out):
    """Transpose a CSR relation: row r lists c  ->  row c lists r (rows come out ascending).

    cursor[c] must start at the transposed offset of row c; it ends at the offset of row c + 1.
    """
    for r in range(offsets.size - 1):
        for k in range(offsets[r], offsets[r + 1]):
            c = index[k]
            out[cursor[c]] = r
            cursor[c] += 1
    return None


def octant_groups(target_octant, pair_row, pair_source, pair_vector, source_octant, flip, col0,
                  group0, new_row, row_item, item_first, groups, out_row, out_source,
                  out_vector, group_sources, sources, key, src_tmp, mark, loc):
    """One level's V-list pairs grouped for M2L by target octant (``aotfmm.expansions``
    ``_octant_plan``), in time linear in the pairs.

    Pair p: target row pair_row[p] (of octant target_octant[row]), source row pair_source[p]
    (of octant source_octant[s]), transfer vector pair_vector[p]. Its vector reflected to
    octant 0 is t = flip[o, v]; col0[t] must be nonzero and group0[t] must equal
    source_octant[s] ^ o, else -1 is returned (as for an index out of range). The target's
    row in the products is new_row[row], in item it = row_item[new_row[row]] (whose first row
    is item_first[it]); the pair's key is 8 it + group0[t]. Out, stably by key (pairs of one
    key keep their order): ``groups`` (n_keys + 1) the offsets, and per pair its row in its
    item, its source's position among its key's distinct sources (ascending) and t;
    ``sources`` the distinct sources of each key in turn, ``group_sources`` (n_keys + 1)
    their offsets. Returns the number of distinct sources (all keys)."""
    n_pairs = pair_row.shape[0]
    n_t = target_octant.shape[0]
    n_src = source_octant.shape[0]
    n_keys = groups.shape[0] - 1
    n_vec = col0.shape[0]
    for k in range(n_keys + 1):
        groups[k] = 0
    for p in range(n_pairs):
        r = pair_row[p]
        s = pair_source[p]
        v = pair_vector[p]
        if r < 0 or r >= n_t or s < 0 or s >= n_src or v < 0 or v >= n_vec:
            return -1
        o = target_octant[r]
        if o < 0 or o > 7:
            return -1
        t = flip[o, v]
        if t < 0 or t >= n_vec or col0[t] == 0 or group0[t] != (source_octant[s] ^ o):
            return -1
        kk = row_item[new_row[r]] * 8 + group0[t]
        if kk < 0 or kk >= n_keys:
            return -1
        key[p] = kk
        groups[kk + 1] += 1
    for k in range(n_keys):
        groups[k + 1] += groups[k]
    for k in range(n_keys):  # (group_sources: each key's cursor until it is filled below)
        group_sources[k] = groups[k]
    for p in range(n_pairs):
        kk = key[p]
        q = group_sources[kk]
        group_sources[kk] = q + 1
        r = new_row[pair_row[p]]
        out_row[q] = r - item_first[row_item[r]]
        out_vector[q] = flip[target_octant[pair_row[p]], pair_vector[p]]
        src_tmp[q] = pair_source[p]
    for s in range(n_src):
        mark[s] = -1
    n_out = 0
    group_sources[0] = 0
    for k in range(n_keys):
        first = n_out
        for q in range(groups[k], groups[k + 1]):
            s = src_tmp[q]
            if mark[s] != k:
                mark[s] = k
                sources[n_out] = s
                n_out += 1
        sources[first:n_out].sort()
        for i in range(first, n_out):
            loc[sources[i]] = i - first
        for q in range(groups[k], groups[k + 1]):
            out_source[q] = loc[src_tmp[q]]
        group_sources[k + 1] = n_out
    return n_out
