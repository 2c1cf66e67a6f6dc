from flightrec.parse.fields import DETECTION_READERS, kernel_fields, parse_detection, parse_marker
from flightrec.parse.format import DETECTION_FORMS
from flightrec.parse.ftrace import parse_lines


def test_task_names_with_spaces_and_dashes():
    p = parse_lines(
        [
            "   my fwd-thr 2-55 [003] d.Z1. 1.500000: xsk_flush: (__xsk_map_flush+0x4e/0x180) xs=0x1\n",
            "flowtrackd-p9zw-209120  [001] ..... 542812.657037: tracing_mark_write: ingress q:1 0x16ce900 FILL -> RX\n",
        ]
    )
    assert p.task == ["my fwd-thr 2", "flowtrackd-p9zw"]
    assert p.pid == [55, 209120]
    assert p.cpu == [3, 1]
    assert p.event == ["xsk_flush", "tracing_mark_write"]
    assert p.ts == [1.5, 542812.657037]


def test_trace_cmd_lines_and_losses():
    p = parse_lines(
        [
            "version = 6\n",
            "cpus=8\n",
            "CPU:7 [204600 EVENTS DROPPED]\n",
            "           <...>-3979  [007]   217.975284: sched_stat_runtime:   comm=Thread-103 pid=3979\n",
            "CPU:2 [EVENTS DROPPED]\n",
        ]
    )
    assert p.format == "trace-cmd"
    assert p.header_cpus == 8
    assert [(x.cpu, x.count) for x in p.losses] == [(7, 204600), (2, None)]
    assert p.task == ["<...>"] and p.flags == [""]


def test_trace_cmd_instance_prefix_is_not_part_of_the_task():
    lines = [
        "cpus=2\n",
        "frfix:            <...>-2109  [000]  4217.440421: print:                tracing_mark_write: x\n",
        "frfix:     kworker/u8:2-77    [001]  4217.440422: print:                tracing_mark_write: y\n",
        "    kworker/u8:2-78    [001]  4217.440423: print:                tracing_mark_write: z\n",
        "other:  my fwd-thr 2-79    [001]  4217.440424: print:                tracing_mark_write: z\n",
    ]
    p = parse_lines(lines)
    assert p.task == ["<...>", "kworker/u8:2", "kworker/u8:2", "my fwd-thr 2"]
    assert p.pid == [2109, 77, 78, 79]
    assert p.instances == ("frfix", "other")
    # ftrace's own text has no instance prefix: a task that looks like one stays whole
    p = parse_lines(["# tracer: nop\n", lines[1]])
    assert p.task == ["frfix:            <...>"] and p.instances == ()


def test_ftrace_header_and_wrap_annotations():
    p = parse_lines(
        [
            "# tracer: nop\n",
            "# entries-in-buffer/entries-written: 10/20   #P:4\n",
            "##### CPU 2 buffer started ####\n",
            "CPU:1 [LOST 12 EVENTS]\n",
            "CPU:3 [LOST EVENTS]\n",
        ]
    )
    assert p.entries == (10, 20) and p.header_cpus == 4
    assert p.cpu_started == {2: 3}
    assert p.overrun
    assert [(x.cpu, x.count) for x in p.losses] == [(1, 12), (3, None)]


def test_kprobe_fields_ignore_probe_location():
    names = {"addr": 0, "xs": 1, "len": 2}
    f = kernel_fields("(__xsk_rcv_zc+0x9b/0x250) addr=0x16ce900 len=0x4e xs=0xffffa0c6e26ab400 fq=0x2", names)
    assert f == ([0x16CE900, 0xFFFFA0C6E26AB400, 0x4E], 0b111)
    assert kernel_fields("(ffffffff81a2b3c4) xs=0x1", names) == ([None, 1, None], 0b10)
    assert kernel_fields("xs=0x1 len=-3", names) is None


def test_markers_of_the_post():
    m = parse_marker("ingress q:1 0x16ce900 FILL -> RX")
    assert m == ("ingress q:1", 1, 0x16CE900, "FILL", "RX", None)
    n = parse_marker("0x16ce900 egress_tx_queue forward")
    assert n == (None, None, 0x16CE900, None, None, "egress_tx_queue forward")
    assert parse_marker("hello world") is None
    assert parse_marker("ingress q:1 0x16ce900 FILL -> NOWHERE") is None


def test_detection_lines_with_and_without_space():
    d = parse_marker("ingress q:1 0x1229100 FILL -> RX: expected 0x13d3900 remaining: [1dba100, 1627100, …, ]")
    det = parse_detection(d[5])
    assert det.kind == "fill_order" and det.expected == 0x13D3900
    assert det.remaining == (0x1DBA100, 0x1627100) and det.remaining_cut
    glued = parse_detection("expected 0x1000900remaining: [fe4100, f9c100, …,]")
    assert glued.expected == 0x1000900 and glued.remaining == (0xFE4100, 0xF9C100)
    assert parse_detection("len 56 xdp_len 60").xdp_length == 60
    assert parse_detection("invalid, was TX").was == "TX"


def test_every_detection_form_has_its_reader():
    assert list(DETECTION_READERS) == list(DETECTION_FORMS)
    for kind, form in DETECTION_FORMS.items():
        example = form.replace("EXP", "0x1").replace("HEX", "2").replace("LEN", "3").replace("XDP3", "4")
        example = example.replace("STATE", "TX").replace("PKT", "5").replace("OFF", "6")
        assert parse_detection(example).kind == kind, (kind, example)
