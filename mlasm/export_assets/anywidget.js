// A minimal front end for anywidget models in static pages (mlasm export-notebooks), written for
// this project. The widget's own ES module is in its saved state (the `_esm` trait, with its
// `_css`): it is imported from a blob URL and asked to render into the widget's element, so a
// plotly FigureWidget draws from its saved figure with no kernel and no network.
define("anywidget", ["@jupyter-widgets/base"], function (base) {
  "use strict";

  function importSource(source) {
    if (/^(https?:|blob:|data:)/.test(source)) {
      return import(source);
    }
    var url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
    return import(url).finally(function () { URL.revokeObjectURL(url); });
  }

  function addStyle(css, key) {
    if (!css || document.querySelector('style[data-anywidget="' + key + '"]')) {
      return;
    }
    var style = document.createElement("style");
    style.setAttribute("data-anywidget", key);
    style.textContent = css;
    document.head.appendChild(style);
  }

  // What the widget's module is given as `model`: the saved state, read and (locally) written.
  function modelFacade(model) {
    return {
      get: function (name) { return model.get(name); },
      set: function (name, value) { model.set(name, value); },
      save_changes: function () { /* no kernel to send changes to */ },
      send: function () { /* no kernel to send messages to */ },
      on: function (event, callback) { model.on(event, callback); },
      off: function (event, callback) { model.off(event, callback); },
      widget_manager: model.widget_manager,
    };
  }

  function widgetModule(model) {
    if (!model._anywidgetModule) {
      addStyle(model.get("_css"), model.model_id);
      model._anywidgetModule = importSource(model.get("_esm") || "").then(function (module) {
        var widget = module.default || module;
        return typeof widget === "function" ? widget() : widget;
      }).then(function (widget) {
        return Promise.resolve(widget.initialize && widget.initialize({ model: modelFacade(model) }))
          .then(function () { return widget; });
      });
    }
    return model._anywidgetModule;
  }

  // ES classes, so that the base classes' static methods (deserialising the state) are inherited.
  class AnyModel extends base.DOMWidgetModel {
    defaults() {
      return Object.assign({}, super.defaults(), {
        _model_name: "AnyModel", _model_module: "anywidget",
        _view_name: "AnyView", _view_module: "anywidget",
      });
    }
  }

  class AnyView extends base.DOMWidgetView {
    render() {
      var view = this;
      return widgetModule(this.model).then(function (widget) {
        if (widget.render) {
          return widget.render({ model: modelFacade(view.model), el: view.el });
        }
      }).catch(function (error) {
        view.el.textContent = "This widget could not be drawn without its kernel: " + error;
      });
    }
  }

  return { AnyModel: AnyModel, AnyView: AnyView };
});
