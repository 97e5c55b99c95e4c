//! Builder, shape inference and validation: every malformed graph is an `Err` naming the node.

use qat_graph::{BnCfg, Conv2dCfg, Graph, GraphError, LinearCfg, Node, NodeId, Op, PoolCfg};

fn err_node(e: GraphError) -> String {
    match e {
        GraphError::Node { node, .. } => node,
        e => panic!("expected a node error, got {e}"),
    }
}

#[test]
fn shapes_are_inferred_like_pytorch() {
    let mut g = Graph::new();
    let x = g.input("x", [3, 32, 30]).unwrap();
    let c = g
        .conv2d("c", x, Conv2dCfg::new(3, 8, 3).stride(2).padding(1))
        .unwrap();
    assert_eq!(g.shape(c), &[8, 16, 15]);
    let d = g
        .conv2d(
            "d",
            c,
            Conv2dCfg::new(8, 8, 3).dilation(2).padding(2).groups(8),
        )
        .unwrap();
    assert_eq!(g.shape(d), &[8, 16, 15]);
    let k = g
        .conv2d(
            "k",
            d,
            Conv2dCfg {
                kernel: [1, 3],
                ..Conv2dCfg::new(8, 4, 1)
            },
        )
        .unwrap();
    assert_eq!(g.shape(k), &[4, 16, 13]);
    let m = g
        .max_pool2d(
            "m",
            d,
            PoolCfg {
                kernel: 2,
                stride: 2,
                padding: 0,
            },
        )
        .unwrap();
    assert_eq!(g.shape(m), &[8, 8, 7]);
    let a = g
        .avg_pool2d(
            "a",
            d,
            PoolCfg {
                kernel: 3,
                stride: 1,
                padding: 0,
            },
        )
        .unwrap();
    assert_eq!(g.shape(a), &[8, 14, 13]);
    let cat = g.concat("cat", &[c, d, c], 1).unwrap();
    assert_eq!(g.shape(cat), &[24, 16, 15]);
    let cat_w = g.concat("catw", &[c, c], 3).unwrap();
    assert_eq!(g.shape(cat_w), &[8, 16, 30]);
    let p = g.global_avg_pool("p", cat).unwrap();
    assert_eq!(g.shape(p), &[24, 1, 1]);
    let f = g.flatten("f", p).unwrap();
    assert_eq!(g.shape(f), &[24]);
    let l = g
        .linear(
            "l",
            f,
            LinearCfg {
                in_features: 24,
                out_features: 5,
                bias: false,
            },
        )
        .unwrap();
    let b = g.batch_norm1d("b", l, BnCfg::new(5)).unwrap();
    assert_eq!(g.shape(b), &[5]);
    assert_eq!(g.outputs(), vec![b]);
    assert_eq!(g.inputs(), vec![x]);
    assert_eq!(g.find("d"), Some(d));
    assert_eq!(g.len(), 12);
}

#[test]
fn channel_and_shape_mismatches_name_the_node() {
    let mut g = Graph::new();
    let x = g.input("x", [3, 8, 8]).unwrap();
    let c = g
        .conv2d("features.0.0", x, Conv2dCfg::new(3, 8, 3))
        .unwrap();
    let e = g
        .conv2d("features.1.0", c, Conv2dCfg::new(4, 8, 1))
        .unwrap_err();
    assert!(
        e.to_string().contains("expects 4 input channels, got 8"),
        "{e}"
    );
    assert_eq!(err_node(e), "features.1.0");
    let e = g.batch_norm2d("bn", c, BnCfg::new(7)).unwrap_err();
    assert_eq!(err_node(e), "bn");
    let e = g.add("add", x, c).unwrap_err();
    assert_eq!(err_node(e), "add");
    let e = g
        .linear(
            "fc",
            c,
            LinearCfg {
                in_features: 8,
                out_features: 2,
                bias: true,
            },
        )
        .unwrap_err();
    assert_eq!(err_node(e), "fc");
    let e = g.concat("cat", &[x, c], 0).unwrap_err();
    assert_eq!(err_node(e), "cat");
    let e = g.concat("cat", &[x, c], 2).unwrap_err();
    assert_eq!(err_node(e), "cat");
    let e = g.concat("cat", &[x], 1).unwrap_err();
    assert_eq!(err_node(e), "cat");
    let e = g.batch_norm1d("bn1", c, BnCfg::new(8)).unwrap_err();
    assert_eq!(err_node(e), "bn1");
    // Nothing was added by the failed calls.
    assert_eq!(g.len(), 2);
}

#[test]
fn unsupported_configs_are_errors() {
    let mut g = Graph::new();
    let x = g.input("x", [6, 5, 5]).unwrap();
    let bad = [
        Conv2dCfg::new(6, 4, 3).groups(4),
        Conv2dCfg::new(6, 6, 3).groups(0),
        Conv2dCfg::new(6, 6, 3).stride(0),
        Conv2dCfg::new(6, 6, 7),
        Conv2dCfg::new(6, 6, 3).dilation(3),
        Conv2dCfg {
            kernel: [0, 3],
            ..Conv2dCfg::new(6, 6, 3)
        },
    ];
    for cfg in bad {
        let e = g.conv2d("conv", x, cfg).unwrap_err();
        assert_eq!(err_node(e), "conv", "{cfg:?}");
    }
    let e = g
        .max_pool2d(
            "pool",
            x,
            PoolCfg {
                kernel: 2,
                stride: 2,
                padding: 1,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("padding"), "{e}");
    let e = g
        .avg_pool2d(
            "pool",
            x,
            PoolCfg {
                kernel: 6,
                stride: 1,
                padding: 0,
            },
        )
        .unwrap_err();
    assert_eq!(err_node(e), "pool");
    assert_eq!(err_node(g.dropout("drop", x, 1.0).unwrap_err()), "drop");
    let bn = BnCfg {
        eps: 0.0,
        ..BnCfg::new(6)
    };
    assert_eq!(err_node(g.batch_norm2d("bn", x, bn).unwrap_err()), "bn");
    let bn = BnCfg {
        momentum: 1.5,
        ..BnCfg::new(6)
    };
    assert_eq!(err_node(g.batch_norm2d("bn", x, bn).unwrap_err()), "bn");
    assert!(g.input("y", [3, 0, 2]).is_err());
}

#[test]
fn duplicate_names_and_dangling_inputs() {
    let mut g = Graph::new();
    let x = g.input("x", [4]).unwrap();
    g.relu("r", x).unwrap();
    let e = g.relu("r", x).unwrap_err();
    assert!(e.to_string().contains("duplicate"), "{e}");
    assert_eq!(err_node(e), "r");
    let e = g.add_node("bad", Op::ReLU, vec![NodeId(7)]).unwrap_err();
    assert!(e.to_string().contains("dangling"), "{e}");
    let e = g.add_node("two", Op::ReLU, vec![x, x]).unwrap_err();
    assert_eq!(err_node(e), "two");
    assert!(g.set_outputs(&[NodeId(9)]).is_err());
}

fn node(name: &str, op: Op, inputs: &[usize]) -> Node {
    Node {
        name: name.into(),
        op,
        inputs: inputs.iter().map(|&i| NodeId(i)).collect(),
    }
}

#[test]
fn from_nodes_sorts_and_detects_cycles() {
    // Given out of order: relu (0) <- input (2); add (1) <- relu, input.
    let nodes = vec![
        node("r", Op::ReLU, &[2]),
        node("a", Op::Add, &[0, 2]),
        node("x", Op::Input { shape: vec![3] }, &[]),
    ];
    let g = Graph::from_nodes(nodes, vec![NodeId(1)]).unwrap();
    let names: Vec<&str> = g.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["x", "r", "a"]);
    assert_eq!(g.outputs(), vec![NodeId(2)]);
    assert_eq!(g.node(NodeId(2)).inputs, vec![NodeId(1), NodeId(0)]);

    let cyclic = vec![
        node("x", Op::Input { shape: vec![3] }, &[]),
        node("a", Op::Add, &[0, 2]),
        node("b", Op::ReLU, &[1]),
    ];
    let e = Graph::from_nodes(cyclic, vec![]).unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
    assert_eq!(err_node(e), "a");

    let self_loop = vec![node("s", Op::ReLU, &[0])];
    assert!(Graph::from_nodes(self_loop, vec![]).is_err());

    let dangling = vec![
        node("x", Op::Input { shape: vec![3] }, &[]),
        node("r", Op::ReLU, &[5]),
    ];
    assert_eq!(
        err_node(Graph::from_nodes(dangling, vec![]).unwrap_err()),
        "r"
    );

    let dup = vec![
        node("x", Op::Input { shape: vec![3] }, &[]),
        node("x", Op::ReLU, &[0]),
    ];
    assert!(Graph::from_nodes(dup, vec![])
        .unwrap_err()
        .to_string()
        .contains("duplicate"));
}

#[test]
fn macs_count_convs_and_linears() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 4, 4]).unwrap();
    // 3x3 conv 2->4, pad 1: 4*4*4 outputs * 2*9 = 1152.
    let c = g
        .conv2d("c", x, Conv2dCfg::new(2, 4, 3).padding(1))
        .unwrap();
    // depthwise 3x3: 4*4*4 * 9 = 576.
    let d = g
        .conv2d("d", c, Conv2dCfg::new(4, 4, 3).padding(1).groups(4))
        .unwrap();
    let f = g.flatten("f", d).unwrap();
    // linear 64 -> 3: 192.
    g.linear(
        "l",
        f,
        LinearCfg {
            in_features: 64,
            out_features: 3,
            bias: true,
        },
    )
    .unwrap();
    assert_eq!(g.macs(), 1152 + 576 + 192);
}
