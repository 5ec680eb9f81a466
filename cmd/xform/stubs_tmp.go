package main

import "github.com/spf13/cobra"

// Temporary until inspect/import/demo land (same commit series).
func newInspectCmd() *cobra.Command { return &cobra.Command{Use: "inspect", Hidden: true} }
func newImportCmd() *cobra.Command  { return &cobra.Command{Use: "import", Hidden: true} }
func newDemoCmd() *cobra.Command    { return &cobra.Command{Use: "demo", Hidden: true} }
